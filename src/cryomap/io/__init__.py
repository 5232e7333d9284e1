"""Readers and writers for the formats the field uses: MRC/MRCS, RELION STAR, cryoSPARC .cs,
CryoPPP coordinates and micrographs. Everything written goes through :mod:`cryomap.io.atomic`."""
