"""Package data: small real atomic models (PDB entries, CC0) for the embedded simulated datasets."""
