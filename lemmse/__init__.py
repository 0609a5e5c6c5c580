"""lemmse: the Local-Equivariant MMSE, an analytic model of CNN inverse-problem solvers.

The book (``book/``, chapters 1–15) derives every estimator here and runs it; each module
names its chapter.

The public names are gathered here; each lives in a small module of its own:

- :mod:`lemmse.operators`: forward operators (``Denoising``, ``Inpainting``, ``Blur``,
  ``SuperResolution``) and
  pre-inverses;
- :mod:`lemmse.data`: loaders for FashionMNIST, CIFAR-10 and FFHQ-32;
- :mod:`lemmse.estimators`: ``MMSE``, ``EquivariantMMSE``, ``LocalMMSE``, ``LEMMSE``;
- :mod:`lemmse.superres`: the super-resolution LE-MMSE (``LEMMSE(train, SuperResolution(s))``)
  and the exact Jacobian of the LE-MMSE (``jacobian``, ``bank_moments``);
- :mod:`lemmse.backends`: what solves them (the plan, the streaming attention, the sliding
  window; ``lemmse.engine`` is the attention's former name);
- :mod:`lemmse.groups`: grid symmetry groups (``get_group``) and ``symmetry_score``;
- :mod:`lemmse.diagnostics`: the exact weights behind chosen output pixels (``pixel_weights``);
- :mod:`lemmse.metrics`: ``psnr``, ``fsds``;
- :mod:`lemmse.hyra`: the frequency view of a restorer (impulse responses, the linear /
  non-linear split N = H + G, spectra; ``import lemmse.hyra``);
- :mod:`lemmse.minnorm`: minimum-norm shallow denoisers and the empirical MMSE of a point set;
- :mod:`lemmse.nets`: U-Net, ResNet and PatchMLP with an exact ``P × P`` receptive field;
- :mod:`lemmse.train`: resumable training, checkpoints, ``train_or_load``.
"""

from lemmse import engine  # noqa: F401 (lemmse.engine: the old name of lemmse.backends.attention)
from lemmse.data import data_root, load_dataset, load_labels
from lemmse.estimators import (LEMMSE, MMSE, EquivariantMMSE, LocalMMSE, Posterior,
                               extract_patches)
from lemmse.diagnostics import PixelWeights, pixel_weights
from lemmse.superres import SuperResolutionLEMMSE
from lemmse.groups import Group, GroupElement, get_group, symmetry_score
from lemmse.metrics import fsds, psnr
from lemmse.minnorm import (MinNormDenoiser1D, ShallowDenoiser, emmse, emmse_1d,
                             minnorm_denoiser_1d, train_shallow)
from lemmse.nets import make_model, receptive_field
from lemmse.operators import (Blur, Denoising, Inpainting, Operator, SuperResolution,
                              preinverse)
from lemmse.train import (TrainConfig, export_checkpoint, load_checkpoint, predict,
                          train_model, train_or_load)

__version__ = "0.1.0"

__all__ = [
    "Blur", "Denoising", "Inpainting", "Operator", "SuperResolution", "preinverse",
    "data_root", "load_dataset", "load_labels",
    "MMSE", "EquivariantMMSE", "LocalMMSE", "LEMMSE", "Posterior", "extract_patches",
    "SuperResolutionLEMMSE",
    "PixelWeights", "pixel_weights",
    "Group", "GroupElement", "get_group", "symmetry_score",
    "psnr", "fsds",
    "MinNormDenoiser1D", "minnorm_denoiser_1d", "emmse", "emmse_1d", "ShallowDenoiser",
    "train_shallow",
    "make_model", "receptive_field",
    "TrainConfig", "train_model", "train_or_load", "load_checkpoint", "export_checkpoint",
    "predict",
]
