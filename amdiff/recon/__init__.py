"""Reconstruction: LOR histograms of a list (histogram), OSEM (osem) and the external engine
(external), on the system model of amdiff.physics. Import the submodules: this package imports
none of them, so the torch-free ones (.external) load without torch."""
