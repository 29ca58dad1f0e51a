"""Which files of a folder a corpus reads (mlx_llm.data.corpus_files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_llm.data.corpus_files import describe_files, list_corpus_files


def _tree(root: Path) -> Path:
    for name in ("b.txt", "a/x.jsonl", "a/notes.md", "README.md", "run.sh", ".git/config.txt", "books/c.md"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("text")
    return root


def _names(files, root):
    return [path.relative_to(root).as_posix() for path in files]


def test_folder_gives_text_and_jsonl_files_only(tmp_path):
    root = _tree(tmp_path / "data")
    assert _names(list_corpus_files(root), root) == ["a/x.jsonl", "b.txt"]


def test_pattern_matches_names_or_paths(tmp_path):
    root = _tree(tmp_path / "data")
    assert _names(list_corpus_files(root, pattern="*.md"), root) == ["README.md", "a/notes.md", "books/c.md"]
    assert _names(list_corpus_files(root, pattern="books/*.md"), root) == ["books/c.md"]
    # Files named directly are read whatever the pattern says.
    assert list_corpus_files([root / "run.sh"], pattern="*.txt") == [root / "run.sh"]


def test_folder_without_matches_names_the_pattern(tmp_path):
    root = _tree(tmp_path / "data")
    with pytest.raises(ValueError, match=r"holds no files matching '\*\.csv'.*--data-glob"):
        list_corpus_files(root, pattern="*.csv")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_corpus_files(tmp_path / "nowhere")


def test_describe_files_names_the_first_few():
    files = [Path(f"f{index}.txt") for index in range(7)]
    assert describe_files(files[:1]) == "1 file: f0.txt"
    assert describe_files(files) == "7 files: f0.txt, f1.txt, f2.txt, f3.txt, f4.txt and 2 more"
