"""Lava processes and process models of lnm-deploy (only these modules live here: Lava's model
discovery executes every ``.py`` file in a process's directory)."""
