from typing import Literal, overload

import numpy as np
from numpy.typing import NDArray

__all__ = ["load_digits"]

class _DigitsBunch(dict[str, object]):
    """What ``load_digits()`` returns: a ``sklearn.utils.Bunch`` (a dict whose keys
    are also attributes).  Stub-only name; the runtime class is ``sklearn.utils.Bunch``.
    """

    data: NDArray[np.float64]
    """``(n_samples, 64)`` flattened 8x8 images, pixel values 0..16."""
    target: NDArray[np.int64]
    """``(n_samples,)`` digit labels in ``range(n_class)``."""
    frame: None
    """Only a DataFrame when ``as_frame=True`` (not supported by these stubs)."""
    feature_names: list[str]
    """``["pixel_0_0", ..., "pixel_7_7"]``."""
    target_names: NDArray[np.int64]
    """``np.arange(10)``."""
    images: NDArray[np.float64]
    """``(n_samples, 8, 8)`` images, pixel values 0..16."""
    DESCR: str
    """The dataset's description (reStructuredText)."""

# Real signature: load_digits(*, n_class=10, return_X_y=False, as_frame=False).
# as_frame=True returns pandas objects; pandas is no dependency here, so it is
# typed as accepting only False.
@overload
def load_digits(
    *,
    n_class: int = 10,
    return_X_y: Literal[False] = False,
    as_frame: Literal[False] = False,
) -> _DigitsBunch: ...
@overload
def load_digits(
    *,
    n_class: int = 10,
    return_X_y: Literal[True],
    as_frame: Literal[False] = False,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]: ...
@overload
def load_digits(
    *,
    n_class: int = 10,
    return_X_y: bool,
    as_frame: Literal[False] = False,
) -> _DigitsBunch | tuple[NDArray[np.float64], NDArray[np.int64]]: ...
