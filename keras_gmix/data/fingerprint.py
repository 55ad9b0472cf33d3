"""What identifies the data a run trains on, so that a resume notices other data.

A run's config.json names its data by path or name only; a `.npz` file or
an image folder replaced between a kill and `--resume` would otherwise be
trained on silently. `data_fingerprint` describes the data from its files,
without loading it, and `fingerprint_changes` says in words what differs
between two descriptions:

- a `.npz` file: its absolute path, size in bytes and SHA-256 of its content;
- a folder of class subfolders (and a test folder): its absolute path, the
  number of files, their total size and a SHA-256 of the listing (each
  file's relative path, size and modification time);
- a TensorFlow Datasets set: its name, the builder's version and the splits;
- digits: the name (scikit-learn ships it; it does not change).
"""

import hashlib
import os

TFDS_SPLITS = ("train", "test")
_CHUNK = 1 << 20


def _file_hash(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _npz_fingerprint(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such .npz file: {path!r}")
    return {
        "kind": "npz",
        "path": os.path.abspath(path),
        "bytes": os.path.getsize(path),
        "sha256": _file_hash(path),
    }


def _folder_fingerprint(folder):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No such folder: {folder!r}")
    listing = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            stat = os.stat(path)
            listing.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    text = "\n".join(f"{name}\t{size}\t{mtime}" for name, size, mtime in listing)
    return {
        "kind": "folder",
        "path": os.path.abspath(folder),
        "files": len(listing),
        "bytes": sum(size for _, size, _ in listing),
        "listing_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def _tfds_fingerprint(name, data_dir):
    import tensorflow_datasets as tfds

    return {
        "kind": "tfds",
        "name": name,
        "version": str(tfds.builder(name, data_dir=data_dir).version),
        "splits": list(TFDS_SPLITS),
    }


def data_fingerprint(name, test_dataset=None, data_dir=None):
    """A JSON-able description of a run's data, read from its files (not loaded).

    Args:
        name: the `dataset` setting: a TFDS name, "digits", a `.npz` path or
            a folder.
        test_dataset: a folder's test folder, or None. Defaults to `None`.
        data_dir: TFDS' data directory. Defaults to `None`.

    Returns:
        `{"train": ..., "test": ...}` (`"test"` only with a test folder).
    """
    from keras_gmix.data.datasets import DATASET_NAMES, TFDS_DATASETS

    name = os.fspath(name)
    if name in TFDS_DATASETS:
        train = _tfds_fingerprint(name, data_dir)
    elif name in DATASET_NAMES:
        train = {"kind": name}
    elif name.endswith(".npz"):
        train = _npz_fingerprint(name)
    else:
        train = _folder_fingerprint(name)
    fingerprint = {"train": train}
    if test_dataset is not None:
        fingerprint["test"] = _folder_fingerprint(os.fspath(test_dataset))
    return fingerprint


def recorded_path(fingerprint, part, path):
    """The absolute path `fingerprint` recorded for `part` ("train" or
    "test") when `path`, as a run's config.json names it, is relative and
    missing from here (the run began in another directory); else None."""
    began = ((fingerprint or {}).get(part) or {}).get("path")
    if path and began and not os.path.isabs(path) and not os.path.exists(path):
        return began
    return None


# How a changed entry is told: hashes only differ, numbers and names go a -> b.
_HASH_WORDS = {
    "sha256": "the content differs",
    "listing_sha256": "file names, sizes or modification times differ",
}


def fingerprint_changes(saved, current):
    """Sentences saying how `current` differs from `saved` (both `data_fingerprint`s).

    Returns:
        A list of strings, empty when the data is the same.
    """
    changes = []
    for part in sorted(set(saved) | set(current)):
        before, now = saved.get(part) or {}, current.get(part) or {}
        if before == now:
            continue
        where = now.get("path") or now.get("name") or before.get("path") or before.get("name")
        differences = []
        for key in [k for k in before if k != "kind"] + [k for k in now if k not in before]:
            if before.get(key) == now.get(key):
                continue
            if key in _HASH_WORDS:
                differences.append(_HASH_WORDS[key])
            else:
                differences.append(f"{key} {before.get(key)!r} -> {now.get(key)!r}")
        if before.get("kind") != now.get("kind"):
            differences.insert(0, f"kind {before.get('kind')!r} -> {now.get('kind')!r}")
        changes.append(f"{part} data ({where}): {', '.join(differences)}")
    return changes
