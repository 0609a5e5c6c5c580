"""The task registry of the experiments: which forward operator A each task name means.

:data:`TASKS` names the tasks of the reference setup and :func:`make_operator` builds their
operator for an image shape; :data:`PHYSICS` maps "agnostic" / "aware" to the pre-inverse of
``lemmse.operators.preinverse``; :data:`TASK_FACTORS` gives the super-resolution factor of
the networks of a task. Training (:mod:`lemmse.train`), the grid of experiments and the
chapters read them (book chapter 8 for the grid, chapter 10 for the physics, chapter 15 for
super-resolution).
"""

from __future__ import annotations

from lemmse._validate import check_choice
from lemmse.operators import Blur, Denoising, Inpainting, SuperResolution

__all__ = ["TASKS", "TASK_FACTORS", "PHYSICS", "make_operator"]

#: Tasks of the reference setup: the forward operator A for an image shape (C, H, W).
TASKS = {
    "denoising": "A = I",
    "inpainting": "centred 15×15 hole (Inpainting.center_box(shape, 15))",
    "inpainting-random": "30 % missing pixels, one mask, seed 1234 (Inpainting.random(shape, 0.3, 1234))",
    "deblurring": "Gaussian blur, std 1 px, circular (Blur.gaussian(shape, 1.0))",
    "deblurring-disk": "defocus disk, radius 2.5 px, circular (Blur.disk(shape, 2.5))",
    "superresolution": "x2 super-resolution: 2×2 block means, noise on the LR grid "
                       "(SuperResolution(2)); the network outputs the HR grid",
}

#: Super-resolution factor of the networks of each task (1 for the tasks not listed).
TASK_FACTORS = {"superresolution": 2}

#: Physics: the pre-inverse kind given to ``lemmse.operators.preinverse``.
PHYSICS = {"agnostic": "identity", "aware": "inverse"}


def make_operator(task: str, image_shape):
    """The forward operator A of ``task`` for images of shape (C, H, W) (see ``TASKS``).

    For "superresolution" the shape is not used (``SuperResolution(2)`` takes any HR image
    whose sides are even).
    """
    check_choice("task", task, tuple(TASKS))
    shape = tuple(int(s) for s in image_shape)
    if task == "denoising":
        return Denoising()
    if task == "superresolution":
        return SuperResolution(TASK_FACTORS[task])
    if task == "inpainting":
        return Inpainting.center_box(shape, 15)
    if task == "inpainting-random":
        return Inpainting.random(shape, 0.3, 1234)
    if task == "deblurring":
        return Blur.gaussian(shape, 1.0)
    return Blur.disk(shape, 2.5)
