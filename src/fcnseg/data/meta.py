"""Class metadata that travels with every data set and every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The label of pixels that count in neither the loss nor the metrics (VOC's boundary, CamVid's
# void, COCO's crowds): every data set remaps its own to this, every mask stores it.
IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The standard Pascal VOC colour map (``n`` entries; index 255 is (224, 224, 192)).

    Built with the devkit's bit-interleaving rule so that every index, not only the 21
    classes, has the colour VOC's own palette PNGs use.
    """
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


@dataclass
class DatasetMeta:
    """Names, colours, ignore index and normalisation of a data set's classes.

    ``palette[i]`` is the display colour of class ``i``; pixels labelled ``ignore_index``
    (always 255 after a data set's remapping) count in neither the loss nor the metrics.
    """

    name: str
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int = IGNORE_INDEX
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = [str(n) for n in self.class_names]
        self.palette = [tuple(int(v) for v in c) for c in self.palette]  # type: ignore[misc]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if len(self.palette) < len(self.class_names):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} classes but {len(self.palette)} colours"
            )
        if 0 <= self.ignore_index < len(self.class_names):
            raise ValueError(f"{self.name}: ignore_index {self.ignore_index} is a class id")

    @property
    def num_classes(self) -> int:
        """Number of real classes (the ignore label is not one)."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only, so a checkpoint loads with ``weights_only=True``."""
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette[: self.num_classes]],
            "ignore_index": int(self.ignore_index),
            "mean": list(self.mean),
            "std": list(self.std),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMeta:
        """Inverse of :meth:`to_dict` (unknown keys are ignored for forward compatibility)."""
        return cls(
            name=d["name"],
            class_names=list(d["class_names"]),
            palette=[tuple(c) for c in d["palette"]],
            ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
            mean=tuple(d.get("mean", IMAGENET_MEAN)),
            std=tuple(d.get("std", IMAGENET_STD)),
            extra=dict(d.get("extra", {})),
        )


def class_mismatch(saved: list[str], wanted: list[str], where: str = "the data set") -> str:
    """How a model's classes ``saved`` differ from ``wanted`` (empty when they are the
    same, in order): the one rule for "does this checkpoint fit this data"."""
    a, b = list(saved), list(wanted)
    if a == b:
        return ""
    if len(a) != len(b):
        return f"{len(a)} classes in the checkpoint vs {len(b)} in {where}"
    diffs = [f"#{i} {x!r} vs {y!r}" for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return "class names differ: " + ", ".join(diffs[:3]) + more
