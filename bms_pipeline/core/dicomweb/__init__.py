"""Publishing a slide's SM and ANN series to a DICOMweb server (STOW-RS, checked by QIDO/WADO)."""
