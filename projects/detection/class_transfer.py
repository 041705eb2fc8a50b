"""Transfer of class-specific head rows between label spaces (Objects365 -> COCO / LVIS).

Class-agnostic parts (backbone, pyramid, RPN, box-head convs/fcs, class-agnostic box regression, mask-head convs)
load unchanged. Class-specific rows (classification logits, class-specific box deltas, mask predictors) are
taken from the source model for target classes whose name matches a source class (case-, separator- and
synonym-insensitive) and keep their fresh initialisation otherwise. The background logit keeps its fresh
initialisation too, as when Detectron2 skips a parameter of another shape.

A checkpoint with the model's class count and no class names of its own (a released detector such as the EVA-01
authors' ``eva_coco_det.pth``) is not a transfer: its rows load by key and shape, unchanged, as Detectron2 loads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

from torch import Tensor

__all__ = [
    "SYNONYMS",
    "normalize_class_name",
    "class_aliases",
    "match_classes",
    "ClassTransferReport",
    "transfer_class_rows",
    "is_class_specific",
]

#: spelling variants between common detection label spaces (both directions are used)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "motorcycle": ("motorbike",),
    "couch": ("sofa",),
    "airplane": ("aeroplane", "plane"),
    "tv": ("television", "monitor", "tv monitor", "tvmonitor"),
    "hair drier": ("hair dryer", "hairdryer"),
    "cell phone": ("cellphone", "mobile phone", "phone"),
    "donut": ("doughnut",),
    "dining table": ("table",),
    "potted plant": ("pottedplant", "houseplant"),
    "sports ball": ("ball",),
    "skis": ("ski",),
    "wine glass": ("wineglass",),
    "handbag": ("purse", "satchel"),
    "remote": ("remote control",),
    "bicycle": ("bike",),
}

_CLASS_KEYS = re.compile(r"(^|\.)(cls_score|bbox_pred|predictor)\.(weight|bias)$")


def normalize_class_name(name: str) -> str:
    """``"Hair_Drier"`` -> ``"hair drier"``: lower case, ``_``/``-`` as spaces, parentheses dropped."""
    name = re.sub(r"\(.*?\)", " ", name.lower())
    return " ".join(re.sub(r"[_\-]+", " ", name).split())


def class_aliases(name: str, extra: Iterable[str] = ()) -> list[str]:
    """Every normalised name a class goes by: itself, its ``/``-separated parts, its synonyms, ``extra``."""
    base = normalize_class_name(name)
    names = [base] + [normalize_class_name(p) for p in re.split(r"/|,", name) if p.strip()]
    names += [normalize_class_name(e) for e in extra]
    for key, syns in SYNONYMS.items():
        group = (key,) + syns
        if any(n in group for n in names):
            names += list(group)
    seen: list[str] = []
    for n in names:
        if n and n not in seen:
            seen.append(n)
    return seen


def match_classes(
    source: Sequence[str],
    target: Sequence[str],
    target_synonyms: Optional[Mapping[str, Sequence[str]]] = None,
) -> dict[int, int]:
    """``{target index: source index}`` for target classes with a source class of the same name.

    An exact (normalised) name wins over a synonym; each source class is used at most once per alias level.
    """
    target_synonyms = target_synonyms or {}
    exact = {}
    for i, s in enumerate(source):
        exact.setdefault(normalize_class_name(s), i)
    alias = {}
    for i, s in enumerate(source):
        for a in class_aliases(s):
            alias.setdefault(a, i)
    out = {}
    for j, t in enumerate(target):
        n = normalize_class_name(t)
        if n in exact:
            out[j] = exact[n]
            continue
        for a in class_aliases(t, target_synonyms.get(t, ())):
            if a in alias:
                out[j] = alias[a]
                break
    return out


@dataclass
class ClassTransferReport:
    matched: dict[str, str] = field(default_factory=dict)  # target class -> source class
    reinitialised: list[str] = field(default_factory=list)  # target classes without a match
    keys: list[str] = field(default_factory=list)  # class-specific parameters that were rebuilt

    def summary(self) -> str:
        pairs = ", ".join(f"{t}<-{s}" if t != s else t for t, s in list(self.matched.items())[:20])
        more = f" (+{len(self.matched) - 20} more)" if len(self.matched) > 20 else ""
        lines = [
            f"class transfer: {len(self.matched)} classes initialised from the source model by name: {pairs}{more}",
            f"class transfer: {len(self.reinitialised)} classes re-initialised (no match): "
            + ", ".join(self.reinitialised[:20])
            + (" ..." if len(self.reinitialised) > 20 else ""),
            f"class transfer: rebuilt {', '.join(self.keys)}",
        ]
        return "\n".join(lines)


def is_class_specific(key: str) -> bool:
    """Whether a detector parameter is indexed by class (logits, box deltas or mask predictor)."""
    return bool(_CLASS_KEYS.search(key)) and key.startswith("roi_heads.")


def _layout(key: str, n_rows: int, num_classes: int) -> tuple[int, int] | None:
    """(rows per class, trailing rows) of a class-specific parameter, or None when it is class-agnostic."""
    if ".cls_score." in key:
        return (1, 1) if n_rows == num_classes + 1 else None  # logits, background last
    if ".bbox_pred." in key:
        return (4, 0) if n_rows == 4 * num_classes and n_rows != 4 else None  # 4 rows: class-agnostic deltas
    if ".predictor." in key:
        return (1, 0) if n_rows == num_classes and n_rows != 1 else None  # 1 row: class-agnostic mask
    return None


def _source_class_count(state_dict: Mapping[str, Tensor], class_keys: Sequence[str], default: int) -> int:
    """The checkpoint's class count, read from its classification logits (K + 1 rows); ``default`` without any."""
    logits = [state_dict[k] for k in class_keys if ".cls_score." in k]
    return logits[0].shape[0] - 1 if logits else default


def transfer_class_rows(
    state_dict: dict[str, Tensor],
    model_state: Mapping[str, Tensor],
    source_classes: Optional[Sequence[str]],
    target_classes: Sequence[str],
    target_synonyms: Optional[Mapping[str, Sequence[str]]] = None,
) -> ClassTransferReport:
    """Rewrites the class-specific parameters of ``state_dict`` (in place) to the target label space.

    Args:
        state_dict: the source detector's parameters (``roi_heads.box_predictor.0.cls_score.weight``, ...).
        model_state: the target model's state dict (fresh initialisation, target shapes).
        source_classes: the source model's class names; None when unknown (every class is re-initialised).
        target_classes: the target model's class names.
    """
    report = ClassTransferReport()
    kt = len(target_classes)
    class_keys = [k for k in state_dict if is_class_specific(k) and k in model_state]
    ks = _source_class_count(state_dict, class_keys, kt)
    if source_classes is not None and len(source_classes) != ks:
        raise ValueError(
            f"source_classes names {len(source_classes)} classes but the checkpoint's class-specific "
            f"parameters hold {ks}"
        )
    if source_classes is None and ks == kt:
        return report  # same label space size, no names: load by key and shape, as Detectron2 does
    matches = match_classes(source_classes, target_classes, target_synonyms) if source_classes else {}
    same_space = source_classes is not None and list(source_classes) == list(target_classes)
    for key in class_keys:
        src, dst = state_dict[key], model_state[key]
        if same_space and src.shape == dst.shape:
            continue
        layout = _layout(key, dst.shape[0], kt)
        if layout is None:
            continue
        if _layout(key, src.shape[0], ks) != layout or src.shape[1:] != dst.shape[1:]:
            raise ValueError(
                f"class-specific parameter {key!r}: checkpoint shape {list(src.shape)} does not fit "
                f"{ks} source classes for the model's {list(dst.shape)} ({kt} classes)"
            )
        r = layout[0]
        new = dst.detach().clone().to(src.dtype)  # unmatched rows and the background logit: fresh
        for j, i in matches.items():
            new[j * r : (j + 1) * r] = src[i * r : (i + 1) * r]
        state_dict[key] = new
        report.keys.append(key)
    for j, name in enumerate(target_classes):
        if j in matches:
            report.matched[name] = source_classes[matches[j]]
        else:
            report.reinitialised.append(name)
    return report
