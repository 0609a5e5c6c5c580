"""The experiment grid of the book's Experiments part: trained networks against the LE-MMSE.

A declarative grid (:class:`Experiment`, one trained network each) at three scales
(:class:`Scale`): ``"cpu"``, sized to train in minutes on a 2-core CPU, ``"cpu-long"`` (the same
networks trained 16 times longer), and ``"reference"``,
the reference setup (reference widths, 24 000 steps of 256 images; for a GPU). Functions:

- :func:`train_grid`: train (or load) the networks of the grid (``lemmse.train.train_or_load``);
- :func:`export_grid`: copy their EMA weights (fp16) to ``results/checkpoints`` with a
  ``MANIFEST.json`` (config, command, data, steps, sha256);
- :func:`evaluate_agreement`: for each setting, split and σ, the mean over ``n_images``
  images of PSNR(net, LE-MMSE), PSNR(net, truth) and PSNR(LE-MMSE, truth), where the network and
  the LE-MMSE see the same measurement ``y = A x + σ e`` and the LE-MMSE uses the network's own
  ``n_train`` training images (book chapter "Networks vs LE-MMSE");
- :func:`write_agreement_csv` / :func:`read_agreement_csv`: ``results/agreement.csv``;
- :func:`evaluate_patch_size`: each network against the LE-MMSEs of several patch sizes
  (``results/patch_size.csv``, book chapter "What the agreement reveals");
- :func:`evaluate_budget`: the agreement of the networks trained for each of several budgets
  (``results/training_budget.csv``, chapter "Networks vs LE-MMSE");
- :func:`evaluate_groups`: group-averaged networks against the LE-MMSE of each group orbit
  (``results/groups.csv``, chapter "Beyond translations").

Three grids: ``GRID`` (the 25 networks of the agreement tables), ``ANALYSIS`` (U-Nets on
n = 100 and 1 000 images, a ResNet on 1 000; U-Nets and PatchMLPs with P = 3, 7, 9) and
``SR_GRID`` (×2 super-resolution networks, FashionMNIST 28→14 and CIFAR-10 32→16, the three
architectures; book chapter 15), selected with ``--grid`` (``main``, ``analysis``, ``sr``).
``--steps`` and ``--group`` train and select variants of any of them.

``results/`` is :func:`results_root`: ``$LEMMSE_RESULTS`` if set, else the ``results/`` folder
of the checkout holding the ``lemmse`` package when it exists, else ``./results``. Every default
path of this package and of the command line that names ``results/`` means that folder (the
chapters read it the same way); ``checkpoints/`` (the full training checkpoints and the LE-MMSE
cache) stays relative to the current folder.

The package, by concern: ``lemmse.experiments.grid`` (scales, experiments, grids,
:func:`select`; book chapter 8 ``book/08_training.md``), ``lemmse.experiments.runs``
(training, export, manifest, :func:`find_checkpoint`; chapter 8),
``lemmse.experiments.evaluation`` (the studies; chapters 9 to 11, 14, 15) and
``lemmse.experiments.tables`` (the CSV tables). The command line is in ``lemmse.cli``.

Command line (one command per step; every command also takes ``--dataset``, ``--task``,
``--arch``, ``--physics`` filters)::

    python -m lemmse experiment train --scale cpu            # here, on the CPU
    python -m lemmse experiment export --scale cpu           # -> results/checkpoints
    python -m lemmse experiment agreement --scale cpu --out results/agreement.csv
    python -m lemmse experiment patch-size --scale cpu --grid all --dataset fashion-mnist --task denoising --arch unet patchmlp --n-train 10000
    python -m lemmse experiment budget --dataset fashion-mnist --task denoising --physics agnostic
    python -m lemmse experiment groups --dataset fashion-mnist --task denoising --n-train 1000 --arch unet resnet
    python -m lemmse experiment train --grid sr --dataset fashion-mnist   # x2 super-resolution
    python -m lemmse experiment export --grid sr --dataset fashion-mnist

At the reference scale, on a GPU (``device="auto"`` picks CUDA) with the full data sets, one
command reruns each experiment (here FashionMNIST denoising with the U-Net)::

    python -m lemmse experiment train --scale reference --dataset fashion-mnist --task denoising --arch unet

and ``python -m lemmse experiment agreement --scale reference --n-images 100`` evaluates it as
the reference setup does (100 images per split). :meth:`Experiment.command` prints the command
of any experiment.
"""

from lemmse._paths import results_root
from lemmse.experiments.evaluation import (
    eval_images,
    evaluate_agreement,
    evaluate_budget,
    evaluate_groups,
    evaluate_patch_size,
    lemmse_outputs,
    noise_seed,
)
from lemmse.experiments.grid import (
    ANALYSIS,
    BUDGET_STEPS,
    EVAL_SPLITS,
    GRID,
    GRIDS,
    SCALES,
    SIGMAS,
    SR_GRID,
    SR_SIGMA_MAX,
    SR_STEPS,
    Experiment,
    Scale,
    select,
)
from lemmse.experiments.runs import RESULTS_CHECKPOINTS, export_grid, find_checkpoint, train_grid
from lemmse.experiments.tables import (
    BUDGET_CSV_COLUMNS,
    CSV_COLUMNS,
    GROUP_CSV_COLUMNS,
    PATCH_CSV_COLUMNS,
    merge_rows,
    read_agreement_csv,
    read_budget_csv,
    read_groups_csv,
    read_patch_size_csv,
    write_agreement_csv,
    write_budget_csv,
    write_groups_csv,
    write_patch_size_csv,
)

__all__ = [
    "results_root",
    "SIGMAS",
    "EVAL_SPLITS",
    "CSV_COLUMNS",
    "BUDGET_STEPS",
    "BUDGET_CSV_COLUMNS",
    "evaluate_budget",
    "write_budget_csv",
    "read_budget_csv",
    "GROUP_CSV_COLUMNS",
    "evaluate_groups",
    "write_groups_csv",
    "read_groups_csv",
    "Scale",
    "SCALES",
    "Experiment",
    "GRID",
    "SR_GRID",
    "SR_STEPS",
    "SR_SIGMA_MAX",
    "select",
    "train_grid",
    "export_grid",
    "find_checkpoint",
    "noise_seed",
    "evaluate_agreement",
    "lemmse_outputs",
    "eval_images",
    "evaluate_patch_size",
    "PATCH_CSV_COLUMNS",
    "ANALYSIS",
    "GRIDS",
    "write_patch_size_csv",
    "read_patch_size_csv",
    "write_agreement_csv",
    "read_agreement_csv",
    "merge_rows",
]
