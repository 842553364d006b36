"""Connected components of a 2-D mask: the one labelling the site steps and the lung selection share.

4-connected (the cross), as ``scipy.ndimage.label``'s default, and numbered the same way (1, 2, ... in the
raster order of each component's first pixel). OpenCV's labeller instead of scipy's: importing
``scipy.ndimage`` costs ~0.2 s of every ``covidct predict`` start-up (scipy's array-API layer imports
``numpy.f2py``, ``numpy.testing``, ...), ``cv2`` ~0.02 s; and OpenCV releases the GIL while it labels,
so the thread preparing the next batch holds up the forward pass less (a 512-file predict 12-16% faster,
BENCHMARKS.md; issue 16). OpenCV comes with pytorch-grad-cam already.
"""

from __future__ import annotations

import cv2
import numpy as np


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 4-connected components of a (H, W) bool ``mask``.

    Returns:
        (H, W) int32 labels (0 outside ``mask``, 1..count inside) and the number of components.
    """
    count, labels = cv2.connectedComponents(
        np.ascontiguousarray(mask, dtype=bool).view(np.uint8), connectivity=4, ltype=cv2.CV_32S
    )
    return labels, count - 1
