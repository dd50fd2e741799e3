"""The physics that simulation and reconstruction share: the scanner's geometry (scanner), the
ray-driven projector (projector), the system model of attenuation, resolution and counts
(system) and the SUV scale (suv). It imports nothing above amdiff.io, so list-mode simulation
(amdiff.listmode) and reconstruction (amdiff.recon) both build on it without importing each
other. Import the submodules: this package imports none of them (suv is torch-free)."""
