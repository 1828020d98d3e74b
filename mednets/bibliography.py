"""The book's references, readable everywhere: author-year labels and Colab reference lists.

The rendered book cites with MyST roles (``{cite:p}`he2016resnet```), which Sphinx turns
into "(He et al., 2016a)" linked to the bibliography page. Colab and Jupyter show the
raw role instead. This module makes both agree, from the one file
``book/references.bib``:

- :func:`author_year_labels` gives every entry its label ("Myronenko, 2019",
  "Kingma and Welling, 2014", "He et al., 2016a": a letter tells apart the same
  authors and year). The book's bibliography and its in-text citations use these
  labels (:func:`setup` registers them with Sphinx), and so does the Colab list.
- :func:`colab_references` writes the Markdown list (author, title, venue, year, link)
  for the keys a notebook cites, and :func:`update_notebook` puts it into the
  notebook's Colab references cell. From the repository root::

      python -m mednets.bibliography notebooks/ch1_classifiers_2d_to_3d.ipynb

The Colab references cell is a Markdown cell tagged ``remove-cell`` (so the rendered
book, which has its own bibliography, leaves it out) whose source starts with
:data:`COLAB_HEADING`. It lists exactly the keys the notebook's Markdown cites.

This is book tooling: it needs ``pybtex`` (installed with ``sphinxcontrib-bibtex``, a
book dependency), imported inside the functions, and nothing else outside the standard
library.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "BIB_FILE",
    "COLAB_HEADING",
    "COLAB_CELL_ID",
    "CITE_ROLE",
    "load_bibliography",
    "author_year_labels",
    "cited_keys",
    "format_reference",
    "colab_references",
    "update_notebook",
    "setup",
]

#: The book's BibTeX file (from the repository root).
BIB_FILE = Path(__file__).resolve().parents[1] / "book" / "references.bib"
#: The first line of every Colab references cell.
COLAB_HEADING = "**References (for Colab)**"
#: The cell id the Colab references cell gets when it is inserted.
COLAB_CELL_ID = "colab-references"
#: A MyST citation role: ``{cite:p}`a,b```, ``{cite:t}`a``` and the other variants.
CITE_ROLE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")

_INTRO = (
    "*In the rendered book each citation links to the bibliography. This list is for "
    "reading the notebook in Colab or Jupyter, where citations show as `{cite:p}` roles; "
    "it is generated from `book/references.bib` by `python -m mednets.bibliography`.*"
)


def _plain(latex: str) -> str:
    """LaTeX field text (braces, accents) as plain Unicode text."""
    from pybtex.richtext import Text

    return Text.from_latex(latex).render_as("text").strip()


def load_bibliography(path: str | Path = BIB_FILE):
    """Parse a BibTeX file with pybtex.

    Args:
        path: The ``.bib`` file. Defaults to :data:`BIB_FILE`.

    Returns:
        A ``pybtex.database.BibliographyData``; ``.entries`` maps key to entry.

    Raises:
        ValueError: If the file does not exist.

    Example:
        >>> bib = load_bibliography()
        >>> bib.entries["he2016resnet"].fields["year"]
        '2016'
    """
    from pybtex.database import parse_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"expected an existing BibTeX file, got {path}")
    return parse_file(str(path))


def _surnames(entry) -> tuple[list[str], bool]:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_plain(" ".join(p.prelast_names + p.last_names)) for p in persons]
    et_al = bool(names) and names[-1] == "others"
    return [n for n in names if n != "others"], et_al


def _base_label(key: str, entry) -> str:
    names, et_al = _surnames(entry)
    if not names:
        who = _plain(entry.fields.get("title", key)).split(":")[0]
    elif len(names) >= 3 or et_al:
        who = f"{names[0]} et al."
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = names[0]
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


def author_year_labels(entries: Mapping) -> dict[str, str]:
    """Author-year labels for BibTeX entries, made unique with a letter after the year.

    One author gives "Surname, year", two "A and B, year", three or more (or an author
    list ending in ``and others``) "A et al., year". Entries whose labels coincide get
    "a", "b", ... after the year, in the alphabetical order of their titles, so the
    letters do not depend on which entries a page cites.

    Args:
        entries: Map from key to ``pybtex.database.Entry`` (``bib.entries``).

    Returns:
        Map from key to label.

    Example:
        >>> labels = author_year_labels(load_bibliography().entries)
        >>> labels["myronenko2018brats"], labels["kingma2014vae"]
        ('Myronenko, 2019', 'Kingma and Welling, 2014')
        >>> labels["he2016resnet"], labels["he2016identity"]
        ('He et al., 2016a', 'He et al., 2016b')
    """
    groups: dict[str, list[str]] = {}
    for key, entry in entries.items():
        groups.setdefault(_base_label(key, entry), []).append(key)
    labels = {}
    for base, keys in groups.items():
        if len(keys) == 1:
            labels[keys[0]] = base
            continue
        keys = sorted(keys, key=lambda k: (_plain(entries[k].fields.get("title", "")).lower(), k))
        for n, key in enumerate(keys):
            labels[key] = base + "abcdefghijklmnopqrstuvwxyz"[n]
    return labels


def cited_keys(cells_or_text: str | Iterable[Mapping]) -> list[str]:
    """The BibTeX keys cited with MyST ``{cite...}`` roles, in order of first citation.

    Args:
        cells_or_text: Markdown text, or notebook cells (dicts as in the ``.ipynb``
            JSON; only Markdown cells are read).

    Returns:
        The keys, each once.

    Example:
        >>> cited_keys("UNet {cite:p}`ronneberger2015unet` and {cite:t}`he2016resnet,ronneberger2015unet`.")
        ['ronneberger2015unet', 'he2016resnet']
    """
    if isinstance(cells_or_text, str):
        texts = [cells_or_text]
    else:
        texts = ["".join(c.get("source", "")) for c in cells_or_text if c.get("cell_type") == "markdown"]
    keys: list[str] = []
    for text in texts:
        for group in CITE_ROLE.findall(text):
            for key in group.split(","):
                key = key.strip()
                if key and key not in keys:
                    keys.append(key)
    return keys


def _link(entry) -> str | None:
    fields = entry.fields
    if "doi" in fields:
        return f"https://doi.org/{fields['doi']}"
    if "url" in fields:
        return fields["url"]
    if fields.get("archivePrefix", fields.get("archiveprefix", "")).lower() == "arxiv" and "eprint" in fields:
        return f"https://arxiv.org/abs/{fields['eprint']}"
    match = re.search(r"arXiv:(\d{4}\.\d{4,5})", fields.get("journal", "") + fields.get("note", ""))
    if match:
        return f"https://arxiv.org/abs/{match.group(1)}"
    match = re.search(r"\\url\{([^}]+)\}", fields.get("howpublished", ""))
    return match.group(1) if match else None


def format_reference(key: str, entry, label: str) -> str:
    """One Markdown list item: label, authors, title, venue, year and link.

    Args:
        key: The BibTeX key (used when a field is missing).
        entry: The ``pybtex.database.Entry``.
        label: Its author-year label (see :func:`author_year_labels`).

    Returns:
        A single line starting with ``- ``.

    Example:
        >>> bib = load_bibliography()
        >>> line = format_reference("kingma2014vae", bib.entries["kingma2014vae"], "Kingma and Welling, 2014")
        >>> print(line[:73])
        - **Kingma and Welling, 2014.** Diederik P. Kingma and Max Welling. *Auto
        >>> print(line[-64:])
        Representations (ICLR), 2014. <https://arxiv.org/abs/1312.6114>
    """
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [
        _plain(" ".join(p.first_names + p.middle_names + p.prelast_names + p.last_names))
        for p in persons
        if str(p) != "others"
    ]
    if len(persons) > len(names):
        authors = ", ".join(names) + " et al."
    elif len(names) > 1:
        authors = ", ".join(names[:-1]) + " and " + names[-1]
    else:
        authors = names[0] if names else ""
    fields = entry.fields
    title = _plain(fields.get("title", key)).rstrip(".")
    venue = fields.get("journal") or fields.get("booktitle") or fields.get("publisher")
    if venue is None and "howpublished" in fields:
        venue = re.sub(r"\\url\{[^}]*\}", "", fields["howpublished"]).strip(" ,")
    parts = [f"- **{label}.**"]
    if authors:
        parts.append(authors if authors.endswith(".") else f"{authors}.")
    parts.append(f"*{title}.*")
    tail = ", ".join(v for v in (_plain(venue) if venue else "", fields.get("year", "")) if v)
    if tail:
        parts.append(f"{tail}.")
    link = _link(entry)
    if link:
        parts.append(f"<{link}>")
    return " ".join(parts)


def colab_references(keys: Sequence[str], bib_path: str | Path = BIB_FILE) -> str:
    """The source of a Colab references cell for the given keys.

    Args:
        keys: BibTeX keys (from :func:`cited_keys`).
        bib_path: The ``.bib`` file. Defaults to :data:`BIB_FILE`.

    Returns:
        Markdown: :data:`COLAB_HEADING`, a one-line note, and one list item per key,
        sorted by label as in the book's bibliography. No trailing newline.

    Raises:
        ValueError: If a key is not in the ``.bib`` file.

    Example:
        >>> print(colab_references(["myronenko2018brats"]).splitlines()[-1][:44])
        - **Myronenko, 2019.** Andriy Myronenko. *3D
    """
    bib = load_bibliography(bib_path)
    missing = [k for k in keys if k not in bib.entries]
    if missing:
        raise ValueError(f"keys {missing} are not in {bib_path}; expected keys of that file")
    labels = author_year_labels(bib.entries)
    ordered = sorted(dict.fromkeys(keys), key=lambda k: (labels[k].lower(), k))
    items = [format_reference(k, bib.entries[k], labels[k]) for k in ordered]
    return "\n".join([COLAB_HEADING, "", _INTRO, "", *items])


def _is_colab_cell(cell: Mapping) -> bool:
    return cell.get("cell_type") == "markdown" and "".join(cell.get("source", "")).startswith(COLAB_HEADING)


def update_notebook(path: str | Path, bib_path: str | Path = BIB_FILE) -> bool:
    """Insert or update a notebook's Colab references cell; leave every other byte alone.

    The cell goes right after the Markdown cell with the ``## References`` heading (or
    at the end when there is none); an existing Colab references cell is updated in
    place. A notebook that cites nothing loses its Colab references cell, if it had one.
    The file is written as nbformat writes it (JSON, indent 1, sorted keys, UTF-8,
    trailing newline), so an unchanged notebook stays byte-identical.

    Args:
        path: The ``.ipynb`` file.
        bib_path: The ``.bib`` file. Defaults to :data:`BIB_FILE`.

    Returns:
        True if the file changed.

    Raises:
        ValueError: If the file is not a notebook, or cites a key missing from the ``.bib``.

    Example:
        >>> import tempfile
        >>> cell = {"cell_type": "markdown", "id": "a", "metadata": {},
        ...         "source": ["## References\\n", "{cite:p}`kingma2014vae`"]}
        >>> nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        >>> path = Path(tempfile.mkdtemp()) / "nb.ipynb"
        >>> _ = path.write_text(json.dumps(nb))
        >>> update_notebook(path), update_notebook(path)
        (True, False)
        >>> json.loads(path.read_text())["cells"][1]["metadata"]
        {'tags': ['remove-cell']}
    """
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    try:
        nb = json.loads(raw)
        cells = nb["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"expected a Jupyter notebook, got {path} ({err})") from None
    others = [c for c in cells if not _is_colab_cell(c)]
    keys = cited_keys(others)
    existing = [n for n, c in enumerate(cells) if _is_colab_cell(c)]
    for n in reversed(existing[1:]):
        del cells[n]
    if not keys:
        if existing:
            del cells[existing[0]]
    else:
        source = colab_references(keys, bib_path)
        lines = source.splitlines(keepends=True)
        if existing:
            cell = cells[existing[0]]
            cell["source"] = lines
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "remove-cell" not in tags:
                tags.append("remove-cell")
        else:
            cell = {"cell_type": "markdown", "id": COLAB_CELL_ID, "metadata": {"tags": ["remove-cell"]}}
            cell["source"] = lines
            heading = [
                n
                for n, c in enumerate(cells)
                if c.get("cell_type") == "markdown"
                and re.search(r"^#+\s*References\s*$", "".join(c.get("source", "")), re.M)
            ]
            cells.insert(heading[-1] + 1 if heading else len(cells), cell)
    out = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False, separators=(",", ": ")) + "\n"
    if out == raw:
        return False
    path.write_text(out, encoding="utf-8")
    return True


def setup(app) -> dict:
    """Sphinx extension: the book's bibliography and citations use the author-year labels.

    Registers the pybtex formatting style ``author_year`` (pybtex's ``plain`` with
    :func:`author_year_labels` as labels) and the sphinxcontrib-bibtex referencing style
    ``author_year_label`` (``{cite:p}`` gives "(He et al., 2016a)", the entry's label in
    round brackets; ``{cite:t}`` gives "He et al. (2016)"). ``_config.yml`` selects them
    with ``bibtex_default_style: author_year`` and
    ``bibtex_reference_style: author_year_label``.

    Args:
        app: The Sphinx application.

    Returns:
        Sphinx extension metadata.
    """
    import dataclasses

    import pybtex.plugin
    from pybtex.style.formatting.plain import Style as PlainStyle
    from pybtex.style.labels import BaseLabelStyle
    from sphinxcontrib.bibtex.plugin import register_plugin
    from sphinxcontrib.bibtex.style.referencing import BracketStyle, GroupReferenceStyle, PersonStyle
    from sphinxcontrib.bibtex.style.referencing.basic_author_year import (
        BasicAuthorYearTextualReferenceStyle,
    )
    from sphinxcontrib.bibtex.style.referencing.basic_label import BasicLabelParentheticalReferenceStyle
    from sphinxcontrib.bibtex.style.referencing.extra_author import ExtraAuthorReferenceStyle
    from sphinxcontrib.bibtex.style.referencing.extra_empty import ExtraEmptyReferenceStyle
    from sphinxcontrib.bibtex.style.referencing.extra_label import ExtraLabelReferenceStyle
    from sphinxcontrib.bibtex.style.referencing.extra_year import ExtraYearReferenceStyle

    class AuthorYearLabelStyle(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            entries = list(sorted_entries)
            labels = author_year_labels({e.key: e for e in entries})
            for entry in entries:
                yield labels[entry.key]

    class AuthorYearStyle(PlainStyle):
        default_label_style = AuthorYearLabelStyle

    @dataclasses.dataclass
    class AuthorYearLabelReferenceStyle(GroupReferenceStyle):
        # The textual and author styles need a person style ({cite:t}`key` -> "Myronenko (2019)").
        person: PersonStyle = dataclasses.field(default_factory=PersonStyle)

        def __post_init__(self):
            round_brackets = BracketStyle(left="(", right=")", sep="; ")
            self.styles.extend(
                [
                    BasicLabelParentheticalReferenceStyle(bracket=round_brackets),
                    BasicAuthorYearTextualReferenceStyle(bracket=round_brackets, person=self.person),
                    ExtraAuthorReferenceStyle(person=self.person),
                    ExtraLabelReferenceStyle(),
                    ExtraYearReferenceStyle(),
                    ExtraEmptyReferenceStyle(),
                ]
            )
            super().__post_init__()

    pybtex.plugin.register_plugin("pybtex.style.formatting", "author_year", AuthorYearStyle, force=True)
    register_plugin(
        "sphinxcontrib.bibtex.style.referencing",
        "author_year_label",
        AuthorYearLabelReferenceStyle,
        force=True,
    )
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: (re)write the Colab references cell of each notebook given."""
    parser = argparse.ArgumentParser(description=update_notebook.__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files")
    parser.add_argument("--bib", type=Path, default=BIB_FILE, help=f"BibTeX file (default: {BIB_FILE})")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        changed = update_notebook(path, args.bib)
        print(f"{path}: {'updated' if changed else 'up to date'}")


if __name__ == "__main__":
    main()
