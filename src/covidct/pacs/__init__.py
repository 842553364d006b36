"""covidct in a hospital's image flow: CT series from a PACS (DICOMweb or C-STORE), results into their study.

``series`` turns one received series into result objects (``report``: a Comprehensive SR, ``capture``: a
Secondary Capture of the Grad-CAM overlay); ``state`` remembers what was done across restarts; ``watch``
polls a DICOMweb server (``dicomweb``) and ``listen`` is a DICOM node (``node``). Research use only.
"""
