"""The ``poisonlab-data`` command: fetch and verify the datasets before a machine runs offline.

Each dataset is looked for where a run looks for it (``--root`` or
``dataset.root``, ``POISONLAB_DATA``, ``../shared/data`` beside the checkout, the
user cache), downloaded when it is nowhere (into ``--root`` or
``POISONLAB_DATA`` when one is set, otherwise into the user cache), prepared
as a run prepares it (archives from a read-only root are extracted into the
user cache) and verified: every file torchvision publishes an MD5 for must
match it, and the decoded dataset must have its known number of samples.

Examples
--------
``poisonlab-data`` (every dataset, into the root a run would use),
``poisonlab-data mnist fashion_mnist --root /data/poisonlab``,
``poisonlab-data --verify`` (check what is on disk; never downloads).

One line per dataset: its name, ``OK``, ``MISSING`` or ``CORRUPT``, and its
folder; a missing or corrupt one is followed by the files expected and every
root looked in, or by the files that fail their checksum. The exit status is 1
when any requested dataset is missing or corrupt. ``POISONLAB_OFFLINE=1`` turns
every download off, as ``--verify`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common.data import (
    SPECS,
    DataCorruptError,
    DataMissingError,
    candidate_roots,
    corrupt_files,
    expected_md5,
    fetch_dataset,
    find_root,
    load_dataset,
    offline,
    prepare_dataset,
    spec_of,
)

#: training and test samples of each complete dataset
SAMPLES: dict[str, tuple[int, int]] = {
    "fashion_mnist": (60000, 10000),
    "mnist": (60000, 10000),
    "cifar10": (50000, 10000),
}

OK, MISSING, CORRUPT = "OK", "MISSING", "CORRUPT"


@dataclass(frozen=True)
class Check:
    """The state of one dataset on this machine.

    Attributes
    ----------
    name : str
        The dataset (``conf/dataset/<name>.yaml``).
    status : str
        ``OK``, ``MISSING`` or ``CORRUPT``.
    folder : Path
        Where a run reads it from (OK), where its files were found (CORRUPT) or
        where they are expected first (MISSING).
    detail : str
        What was checked (OK), or what is wrong and how to fix it.
    """

    name: str
    status: str
    folder: Path
    detail: str


def check_dataset(name: str, root: str | None = None, *, download: bool = True) -> Check:
    """Fetch (when allowed and absent), prepare and verify dataset ``name`` as a run would find it.

    Parameters
    ----------
    name : str
        A dataset of :data:`common.data.SPECS`.
    root : str, optional
        The data root, as ``dataset.root``; None resolves it as a run does.
    download : bool
        False never reaches the network (``--verify``); ``POISONLAB_OFFLINE`` forbids it too.

    Returns
    -------
    Check
        OK only when every file with a published MD5 matches it and the data
        decodes into the expected number of training and test samples.
    """
    spec = spec_of(name)
    target = root or os.environ.get("POISONLAB_DATA")
    if download and target and not offline() and find_root(name, root) is None:
        try:
            fetch_dataset(name, Path(target).expanduser().resolve())
        except DataMissingError as err:
            return Check(name, MISSING, Path(target).expanduser().resolve() / spec.folder, str(err))
    try:
        prepared = prepare_dataset(name, root, download=download)
    except DataCorruptError as err:
        source = find_root(name, root) or candidate_roots(root)[0][0]
        return Check(name, CORRUPT, source / spec.folder, str(err))
    except DataMissingError as err:
        return Check(name, MISSING, candidate_roots(root)[0][0] / spec.folder, str(err))
    source = find_root(name, root) or prepared
    bad = {**corrupt_files(name, source), **corrupt_files(name, prepared)}
    if bad:
        listed = "\n".join(f"{path}: {why}" for path, why in bad.items())
        return Check(
            name,
            CORRUPT,
            source / spec.folder,
            f"these files do not match torchvision's checksums:\n{listed}\n"
            "Replace them with intact copies (or delete them and run poisonlab-data with internet access).",
        )
    try:
        data = load_dataset(name, str(prepared))
    except Exception as err:  # truncated or malformed extracted files
        return Check(name, CORRUPT, prepared / spec.folder, f"the files do not decode: {type(err).__name__}: {err}")
    counts = (int(data.train_y.numel()), int(data.test_y.numel()))
    if counts != SAMPLES[name]:
        train, test = SAMPLES[name]
        return Check(
            name,
            CORRUPT,
            prepared / spec.folder,
            f"decodes into {counts[0]} training and {counts[1]} test samples, expected {train} and {test}; "
            "replace the files with the complete dataset",
        )
    checked = len([rel for rel in expected_md5(name) if (source / rel).is_file() or (prepared / rel).is_file()])
    detail = f"{counts[0]} train / {counts[1]} test samples, MD5 of {checked} files ok"
    if source != prepared:
        detail += f"; archives from {source / spec.folder}"
    return Check(name, OK, prepared / spec.folder, detail)


def report(check: Check) -> str:
    """One line for ``check`` (name, status, folder), then its detail indented when it is not OK."""
    line = f"{check.name:<14} {check.status:<8} {check.folder}"
    if check.status == OK:
        return f"{line}  ({check.detail})"
    return line + "\n" + "\n".join(f"    {row}" for row in check.detail.splitlines())


def main(argv: list[str] | None = None) -> None:
    """Check the datasets named on the command line; exit 1 when any is missing or corrupt."""
    parser = argparse.ArgumentParser(
        prog="poisonlab-data",
        description=(
            "Download (when allowed) and verify poisonlab's datasets ahead of time, for machines that will run "
            "offline. Set POISONLAB_OFFLINE=1 to forbid every download."
        ),
    )
    names = list(SPECS)
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help=f"{', '.join(names)} or all (default)")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="data root to fetch into and verify (as dataset.root); default: the root a run would use",
    )
    parser.add_argument(
        "--verify", action="store_true", help="only check what is on disk: never download (may extract, as a run does)"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.datasets if n not in (*names, "all")]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(map(repr, unknown))}; choose from {', '.join(names)} or all")
    wanted = names if not args.datasets or "all" in args.datasets else list(dict.fromkeys(args.datasets))
    root = str(args.root) if args.root is not None else None
    checks = []
    for name in wanted:
        check = check_dataset(name, root, download=not args.verify)
        print(report(check), flush=True)
        checks.append(check)
    failed = [c.name for c in checks if c.status != OK]
    if failed:
        print(
            f"poisonlab-data: {len(failed)} of {len(checks)} dataset(s) not usable: {', '.join(failed)}",
            file=sys.stderr,
        )
        raise SystemExit(1)


if __name__ == "__main__":
    main()
