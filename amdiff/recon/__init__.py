"""System model (ray-driven projector, count model), OSEM reconstruction, the external engine and
SUV conversion. Import the submodules (amdiff.recon.osem, .external, .suv, ...): this package
imports none of them, so the torch-free ones (.external, .suv) load without torch."""
