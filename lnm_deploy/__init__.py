"""lnm-deploy: take spiking networks with learned neuron dynamics to neuromorphic hardware."""

__version__ = "0.1.0"
