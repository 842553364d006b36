"""Build the demo sample shipped in src/covidct/demo/ from ../shared/data/sars_cov2_ct (run once, by a
maintainer).

10 slices per class from each of the 10 contiguous blocks (evenly spaced inside the block), 200 in all.
Blocks stand in for patients (consecutive file numbers are consecutive slices of one scan), so the
split is by block: 0-5 train, 6-7 val, 8-9 test. The PNG files are copied byte for byte.
"""

import csv
import shutil
import sys
from pathlib import Path

PER_BLOCK = 10
SPLIT_OF_BLOCK = {**dict.fromkeys(range(6), "train"), 6: "val", 7: "val", 8: "test", 9: "test"}


def main(source: Path, target: Path) -> None:
    rows = list(csv.DictReader((source / "metadata.csv").open(newline="")))
    out_rows = []
    for label in ("COVID", "non-COVID"):
        for block in range(10):
            members = sorted(
                (r for r in rows if r["label_name"] == label and int(r["contiguous_block10"]) == block),
                key=lambda r: int(r["seq_index"]),
            )
            step = len(members) / PER_BLOCK
            for k in range(PER_BLOCK):
                row = members[int(k * step + step / 2)]
                name = Path(row["rel_path"]).name.replace(" ", "_").replace("(", "").replace(")", "")
                destination = target / "images" / label / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / row["rel_path"], destination)
                out_rows.append(
                    {
                        "path": f"images/{label}/{name}",
                        "label": label,
                        "patient_id": f"{label}-block{block}",
                        "split": SPLIT_OF_BLOCK[block],
                        "original_file_name": row["original_file_name"],
                        "stored_sha256": row["stored_sha256"],
                    }
                )
    with (target / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out_rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
