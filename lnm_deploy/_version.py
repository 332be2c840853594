"""The package version, at the bottom of the import graph (stages read it from here, not from the
package root, so that no submodule imports ``lnm_deploy/__init__.py`` back)."""

__version__ = "0.1.0"
