"""Adversarial examples (FGSM, PGD) and the DGR routing-path detector of adversarial images.

Attacks are L∞, untargeted, batched and run on the model's device. ``eps`` is measured in
*pixel* space ([0, 1] per channel, before normalisation): the model takes normalised inputs
``(p − mean) / std``, so attacks move to pixel space, perturb there, clamp to the ε-ball and to
[0, 1], and normalise again. The loss of a batch is the *sum* of per-sample losses, so every
sample's perturbation is the one it would get alone.

Detector (Wang et al., CVPR 2018, released code): the continuous DGR gates of an image, all
layers concatenated, are its feature vector; a 50-tree random forest separates clean from
attacked images; ROC-AUC on a held-out split. The clean and attacked versions of one image are
always on the same side of the split. The fitted forest is not saved (persisting a scikit-learn
model would need pickle); only its metrics are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from neuralpath.data import denormalize, normalize
from neuralpath.errors import InputError, check_non_negative
from neuralpath.gating import GatedModel, check_inputs, frozen
from neuralpath.methods.dgr import DGR

AttackName = Literal["fgsm", "pgd"]
ATTACKS: tuple[AttackName, ...] = ("fgsm", "pgd")


def _check_eps(eps: object) -> None:
    check_non_negative(eps, "eps (pixel scale, [0, 1])")


def _check_steps(steps: object) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")


def _check_attack_args(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    eps: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_inputs(inputs)
    if inputs.dim() != 4:
        raise InputError(f"inputs must be images [B, C, H, W], got shape {list(inputs.shape)}")
    _check_eps(eps)
    if len(mean) != inputs.shape[1] or len(std) != inputs.shape[1] or any(s <= 0 for s in std):
        raise InputError(f"mean/std need {inputs.shape[1]} values each, std > 0")
    labels = torch.as_tensor(labels, device=inputs.device)
    if labels.shape != (inputs.shape[0],) or labels.is_floating_point():
        raise InputError(
            f"labels must be [B] = [{inputs.shape[0]}] class indices, got {list(labels.shape)}"
        )
    return labels.long()


def _loss_gradient(
    model: nn.Module, pixels: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """``∂ Σ_b CE(model(normalize(p_b)), y_b) / ∂p``: per-sample gradients ``[B, C, H, W]``."""
    pixels = pixels.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(normalize(pixels, mean, std)), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, pixels)
    return grad


def fgsm(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    eps: float,
    *,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """Fast Gradient Sign Method: ``p' = clamp(p + ε·sign(∇_p CE), 0, 1)``.

    ``inputs``: normalised images ``[B, C, H, W]``; returns normalised adversarial images of the
    same shape, whose pixels differ from the inputs' by at most ``eps``.
    """
    labels = _check_attack_args(model, inputs, labels, eps, mean, std)
    pixels = denormalize(inputs, mean, std)
    with frozen(model):
        grad = _loss_gradient(model, pixels, labels, mean, std)
    adversarial = (pixels + eps * grad.sign()).clamp(0.0, 1.0)
    return normalize(adversarial, mean, std).detach()


def pgd(  # noqa: PLR0913 -- public API; keyword-only attack settings
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    eps: float,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
) -> Tensor:
    """Projected Gradient Descent (Madry et al.): ``steps`` signed-gradient steps of
    ``step_size`` (default ``2.5·ε/steps``), each projected onto the ε-ball around the clean
    pixels and onto [0, 1]; starts from a uniform point of the ball drawn from ``seed`` (on the
    CPU, so every device starts alike). ``inputs``/returns: normalised ``[B, C, H, W]``.
    """
    labels = _check_attack_args(model, inputs, labels, eps, mean, std)
    _check_steps(steps)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    check_non_negative(alpha, "step_size")
    clean = denormalize(inputs, mean, std).detach()
    low, high = (clean - eps).clamp_min(0.0), (clean + eps).clamp_max(1.0)
    pixels = clean
    if random_start:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(clean.shape, generator=generator, dtype=torch.float64).to(clean)
        pixels = torch.minimum(torch.maximum(clean + eps * (2 * noise - 1), low), high)
    with frozen(model):
        for _ in range(steps):
            grad = _loss_gradient(model, pixels, labels, mean, std)
            pixels = torch.minimum(torch.maximum(pixels + alpha * grad.sign(), low), high)
    return normalize(pixels, mean, std).detach()


@dataclass(frozen=True)
class Attack:
    """An untargeted L∞ attack on normalised images, as data.

    ``name``: ``"fgsm"`` or ``"pgd"`` (:func:`fgsm`, :func:`pgd`); ``eps``: budget in pixel units
    of [0, 1]; ``mean``/``std``: the normalisation of the model's inputs; ``steps`` and ``seed``:
    PGD's step count and random start. Calling it attacks a batch:

    >>> adversarial = Attack("pgd", 0.1, data.mean, data.std)(model, images, labels)
    """

    name: AttackName
    eps: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise InputError(f"unknown attack {self.name!r}; expected one of {', '.join(ATTACKS)}")
        _check_eps(self.eps)
        _check_steps(self.steps)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def __call__(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, *, seed_offset: int = 0
    ) -> Tensor:
        """Adversarial copies of ``inputs`` ``[B, C, H, W]`` (normalised) for ``labels`` ``[B]``;
        PGD starts from seed ``seed + seed_offset``."""
        if self.name == "fgsm":
            return fgsm(model, inputs, labels, self.eps, mean=self.mean, std=self.std)
        return pgd(
            model, inputs, labels, self.eps, mean=self.mean, std=self.std, steps=self.steps,
            seed=self.seed + seed_offset,
        )  # fmt: skip


@dataclass(frozen=True)
class DetectionResult:
    """Metrics of the DGR-gate adversarial detector.

    ``roc_auc``/``accuracy``: of the forest on the held-out pairs (clean = 0, attacked = 1);
    ``attack_success_rate``: fraction of the correctly classified clean images that the attack
    made misclassified; ``n``: image pairs used (clean + attacked each), ``n_train``/``n_test``
    their split; ``clean_accuracy``: the model's accuracy on the clean images.
    """

    attack: str
    eps: float
    roc_auc: float
    accuracy: float
    attack_success_rate: float
    clean_accuracy: float
    n: int
    n_train: int
    n_test: int
    only_successful: bool
    features: int

    def to_dict(self) -> dict[str, float | int | str | bool]:
        return asdict(self)


def gate_features(
    finder: DGR, images: Tensor, *, batch_size: int = 64, progress: bool = False
) -> Tensor:
    """Continuous DGR gates of ``images`` ``[N, *input_shape]``, all layers concatenated:
    ``[N, units_total]`` on the model's device, computed ``batch_size`` images at a time."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    rows = []
    for start in tqdm(range(0, images.shape[0], batch_size), desc="dgr", disable=not progress):
        rows.append(finder.optimise(images[start : start + batch_size]).gates.flatten())
    return torch.cat(rows)


@dataclass(frozen=True)
class AttackedImages:
    """Clean images ``[N, C, H, W]`` (normalised), their attacked copies, labels ``[N]`` and the
    model's predictions on both, all on the model's device."""

    images: Tensor
    adversarial: Tensor
    labels: Tensor
    clean_prediction: Tensor
    adversarial_prediction: Tensor

    @property
    def correct(self) -> Tensor:
        """``[N]`` bool: the clean image is classified correctly."""
        return self.clean_prediction == self.labels

    @property
    def fooled(self) -> Tensor:
        """``[N]`` bool: correct on the clean image, wrong on the attacked one."""
        return self.correct & (self.adversarial_prediction != self.labels)

    @property
    def success_rate(self) -> float:
        """Share of the correctly classified clean images that the attack made misclassified."""
        return self.fooled.sum().item() / max(1, self.correct.sum().item())


def attack_images(
    gated: GatedModel, images: Tensor, labels: Tensor, attack: Attack, *, batch_size: int = 64
) -> AttackedImages:
    """Attack ``images`` ``batch_size`` at a time on the model's device (PGD's batch starting at
    image ``k`` uses seed ``attack.seed + k``) and record the predictions on clean and attacked
    images."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    device = gated.device
    images, labels = images.to(device), torch.as_tensor(labels).to(device)
    adversarial, clean_pred, adv_pred = [], [], []
    for start in range(0, images.shape[0], batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        x_adv = attack(gated.model, x, y, seed_offset=start)
        with torch.no_grad():
            clean_pred.append(gated.forward(x).argmax(dim=1))
            adv_pred.append(gated.forward(x_adv).argmax(dim=1))
        adversarial.append(x_adv)
    return AttackedImages(
        images, torch.cat(adversarial), labels, torch.cat(clean_pred), torch.cat(adv_pred)
    )


def fit_detector(
    clean_features: Tensor,
    adversarial_features: Tensor,
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> tuple[float, float, int, int]:
    """Random forest (50 trees) on features ``[P, F]`` of ``P`` clean/attacked image pairs.

    A seeded ``test_fraction`` of the *pairs* is held out, so the two versions of one image are
    on the same side. Returns ``(roc_auc, accuracy, n_train, n_test)`` on the held-out pairs.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score

    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if clean_features.shape != adversarial_features.shape or clean_features.dim() != 2:
        raise InputError("clean and adversarial features must both be [P, F]")
    pairs = clean_features.shape[0]
    n_test = round(test_fraction * pairs)
    if pairs < 4 or n_test < 1 or pairs - n_test < 1:
        raise InputError(
            f"only {pairs} image pairs to detect; use more images, a larger eps, or include "
            "failed attacks"
        )
    order = torch.randperm(pairs, generator=torch.Generator().manual_seed(seed))
    data = {}
    for part, idx in (("test", order[:n_test]), ("train", order[n_test:])):
        idx = idx.to(clean_features.device)
        features = torch.cat([clean_features[idx], adversarial_features[idx]])
        target = torch.cat([torch.zeros(idx.numel()), torch.ones(idx.numel())])
        data[part] = (features.float().cpu().numpy(), target.numpy())
    forest = RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1)
    forest.fit(*data["train"])
    test_x, test_y = data["test"]
    scores = forest.predict_proba(test_x)[:, 1]  # classes_ are [0, 1]: column 1 = attacked
    accuracy = float((forest.predict(test_x) == test_y).mean())
    return float(roc_auc_score(test_y, scores)), accuracy, pairs - n_test, n_test


def detect_adversarial(
    finder: DGR,
    images: Tensor,
    labels: Tensor,
    attack: Attack,
    *,
    test_fraction: float = 0.3,
    only_successful: bool = True,
    batch_size: int = 64,
    progress: bool = False,
) -> DetectionResult:
    """Attack ``images`` (normalised ``[N, C, H, W]`` with labels ``[N]``), compute DGR gates of
    clean and attacked images and score the detector (:func:`fit_detector`, split by
    ``attack.seed``).

    ``only_successful``: keep only pairs whose clean image is classified correctly and whose
    attacked image is not (the attacks worth detecting).
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    attacked = attack_images(finder.gated, images, labels, attack, batch_size=batch_size)
    if only_successful:
        keep = attacked.fooled.nonzero().squeeze(1)
    else:
        keep = torch.arange(attacked.labels.numel(), device=attacked.labels.device)
    if keep.numel() < 4:
        raise InputError(
            f"only {keep.numel()} image pairs to detect (attack success rate "
            f"{attacked.success_rate:.2f}); use more images, a larger eps, or include failed "
            "attacks"
        )
    clean = gate_features(finder, attacked.images[keep], batch_size=batch_size, progress=progress)
    adv = gate_features(
        finder, attacked.adversarial[keep], batch_size=batch_size, progress=progress
    )
    roc_auc, accuracy, n_train, n_test = fit_detector(
        clean, adv, seed=attack.seed, test_fraction=test_fraction
    )
    return DetectionResult(
        attack=attack.name,
        eps=float(attack.eps),
        roc_auc=roc_auc,
        accuracy=accuracy,
        attack_success_rate=float(attacked.success_rate),
        clean_accuracy=float(attacked.correct.float().mean().item()),
        n=keep.numel(),
        n_train=n_train,
        n_test=n_test,
        only_successful=only_successful,
        features=clean.shape[1],
    )
