"""Packages: everything under lnm_deploy/, plus the top-level targets/ and calibration/ folders
installed as lnm_deploy._data.targets and lnm_deploy._data.calibration (see pyproject.toml)."""

from setuptools import find_packages, setup

DATA_PACKAGES = ["lnm_deploy._data.targets", "lnm_deploy._data.calibration"]

setup(packages=find_packages(include=["lnm_deploy", "lnm_deploy.*"]) + DATA_PACKAGES)
