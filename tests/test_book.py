"""The book's conventions, checked over every committed notebook.

The spec the chapters follow (see the teacher's page, book/teaching.md, for why):

1. Colab references. A notebook that cites with ``{cite:...}`` roles has exactly one
   Markdown cell tagged ``remove-cell`` whose source starts with
   ``**References (for Colab)**`` and equals what ``python -m mednets.bibliography
   <notebook>`` writes for the keys the notebook cites.
2. No source strings among the outputs: no ``execute_result`` whose ``text/plain`` is a
   quoted ``def``/``class``/decorator, or a quoted string with an escaped newline and
   indentation (what a function that returns source code shows).
3. No TensorFlow/CUDA start-up noise in any output.
4. Exercises. Under ``## Exercises`` every exercise starts with a Markdown heading
   ``### Exercise N`` (optionally ``: title``), numbered 1, 2, ... Before the next
   exercise or the next ``##`` heading it has
   - a hint: a ``:::{dropdown} Hint`` block, and
   - a solution: a ``:::{dropdown} Solution`` block, or a code cell whose first line is
     ``# Solution to exercise N`` tagged ``hide-cell`` or ``hide-input``, or both.
   Dropdowns are closed (no ``:open:``). Solution code cells are ordinary cells that
   nbval runs: no ``skip-execution``/``raises-exception`` tag, no ``NBVAL_SKIP``.
   Every chapter notebook (``ch*.ipynb``) has exercises.
5. Results come from files. No Markdown table in a notebook has measured units (a
   header or a cell with s, ms, MiB, GB, it/s, ...) or sits in a cell that names a
   benchmark script (``benchmarks/...``, ``bench_*.py``), unless its cell cites a paper
   (``{cite:...}``): a measured number is a code cell's output, run live or read from
   ``benchmarks/results/``; a published number may be typed, with its citation. And
   every ``benchmarks/results/*.json`` is named in a code cell of some notebook.
6. Each chapter notebook (``ch*.ipynb``) opens, before its first ``##`` heading, with a
   Markdown cell holding ``**Learning objectives**`` (a list of at least two items),
   ``**Prerequisites**`` and ``**Time**`` (with a number of minutes or hours).
"""

import json
import re
from pathlib import Path

import pytest

from mednets.bibliography import (
    COLAB_HEADING,
    author_year_labels,
    cited_keys,
    colab_references,
    load_bibliography,
    update_notebook,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHAPTERS = [p for p in NOTEBOOKS if p.stem.startswith("ch")]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def _ids(paths):
    return [p.stem for p in paths]


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _src(cell):
    return "".join(cell.get("source", ""))


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def _output_texts(cell):
    """Every piece of text a code cell's outputs show (streams, plain text, tracebacks)."""
    for out in cell.get("outputs", []):
        if "text" in out:
            yield "".join(out["text"])
        for mime in ("text/plain", "text/html", "text/markdown"):
            if mime in out.get("data", {}):
                yield "".join(out["data"][mime])
        if "traceback" in out:
            yield "\n".join(out["traceback"])


# 1. Colab references ------------------------------------------------------------------


def test_labels_are_unique_and_author_year():
    labels = author_year_labels(load_bibliography().entries)
    assert len(set(labels.values())) == len(labels)
    for key, label in labels.items():
        assert re.fullmatch(r"[^,]+, \d{4}[a-z]?", label), (key, label)


def test_sphinx_styles_register_and_give_the_same_labels():
    import pybtex.plugin
    from sphinxcontrib.bibtex.plugin import find_plugin

    from mednets.bibliography import setup

    setup(None)
    style = pybtex.plugin.find_plugin("pybtex.style.formatting", "author_year")()
    bib = load_bibliography()
    formatted = {e.key: e.label for e in style.format_entries(bib.entries.values())}
    assert formatted == author_year_labels(bib.entries)
    assert find_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_label")


def test_update_notebook_is_idempotent_and_touches_nothing_else(tmp_path):
    source = next(p for p in NOTEBOOKS if cited_keys(_cells(p)))
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes())
    update_notebook(path)
    first = path.read_bytes()
    assert update_notebook(path) is False and path.read_bytes() == first
    before = [c for c in _cells(source) if not _src(c).startswith(COLAB_HEADING)]
    after = _cells(path)
    assert [c for c in after if not _src(c).startswith(COLAB_HEADING)] == before
    colab = [c for c in after if _src(c).startswith(COLAB_HEADING)]
    assert len(colab) == 1 and "remove-cell" in _tags(colab[0])


def test_colab_references_reject_unknown_keys():
    with pytest.raises(ValueError, match="nosuchkey2099"):
        colab_references(["nosuchkey2099"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_colab_references_match_the_bib_file(path):
    cells = _cells(path)
    colab = [c for c in cells if c["cell_type"] == "markdown" and _src(c).startswith(COLAB_HEADING)]
    keys = cited_keys([c for c in cells if c not in colab])
    if not keys:
        assert not colab, "a Colab references cell but no citations"
        return
    fix = f"run: python -m mednets.bibliography {path.relative_to(ROOT)}"
    assert len(colab) == 1, f"expected one Colab references cell, found {len(colab)}; {fix}"
    assert "remove-cell" in _tags(colab[0]), f"the Colab references cell is not tagged remove-cell; {fix}"
    assert _src(colab[0]) == colab_references(keys), f"the Colab references are out of date; {fix}"


# 2 and 3. Outputs ----------------------------------------------------------------------

SOURCE_STRING = re.compile(r"""^[rbuf]*['"](def |class |@|async def )|^[rbuf]*['"].*\\n {4}""", re.S)
NOISE = (
    "cuda_",
    "TF-TRT",
    "oneDNN",
    "Unable to register",
    "E0000",
    "absl::",
    "cuInit",
    "computation_placer",
    "This TensorFlow binary is optimized",
    "NUMA node",
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_source_strings_in_outputs(path):
    bad = []
    for n, cell in enumerate(_cells(path)):
        for out in cell.get("outputs", []):
            text = "".join(out.get("data", {}).get("text/plain", ""))
            if out.get("output_type") == "execute_result" and SOURCE_STRING.search(text):
                bad.append((n, text[:60]))
    assert not bad, f"cells whose output is source code as a string (end the cell with `;` or print): {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_framework_startup_noise_in_outputs(path):
    bad = [
        (n, word)
        for n, cell in enumerate(_cells(path))
        for text in _output_texts(cell)
        for word in NOISE
        if word in text
    ]
    assert not bad, f"TensorFlow/CUDA start-up messages in committed outputs (cell, word): {bad}"


# 4. Exercises ---------------------------------------------------------------------------

EXERCISE = re.compile(r"^###\s+Exercise\s+(\d+)\b.*$", re.M)
SECTION = re.compile(r"^##\s+\S.*$", re.M)
HINT = re.compile(r"^:{3,}\{dropdown\}\s*Hint\b", re.M)
SOLUTION = re.compile(r"^:{3,}\{dropdown\}\s*Solution\b", re.M)


def _exercises(cells):
    """{N: {"markdown": text, "code": [cells]}} for the ``### Exercise N`` blocks."""
    found: dict[int, dict] = {}
    current = None
    for cell in cells:
        if cell["cell_type"] == "markdown":
            text = _src(cell)
            # Split the cell at exercise and section headings, in order.
            marks = sorted(
                [(m.start(), int(m.group(1))) for m in EXERCISE.finditer(text)]
                + [(m.start(), None) for m in SECTION.finditer(text)]
            )
            if current is not None:
                found[current]["markdown"] += text[: marks[0][0]] if marks else text
            for i, (start, number) in enumerate(marks):
                end = marks[i + 1][0] if i + 1 < len(marks) else len(text)
                current = number
                if number is not None:
                    if number in found:
                        raise AssertionError(f"exercise {number} appears twice")
                    found[number] = {"markdown": text[start:end], "code": []}
        elif cell["cell_type"] == "code" and current is not None:
            found[current]["code"].append(cell)
    return found


def test_exercise_parser_on_a_small_example():
    HIDDEN = {"tags": ["hide-cell"]}
    cells = [
        {"cell_type": "markdown", "source": "## Exercises\n\n### Exercise 1: shapes\nDo it.\n"},
        {"cell_type": "markdown", "source": ":::{dropdown} Hint\nLook.\n:::\n"},
        {"cell_type": "code", "source": "# Solution to exercise 1\nx = 1", "metadata": HIDDEN},
        {"cell_type": "markdown", "source": "### Exercise 2\nMore.\n\n## References\n"},
    ]
    ex = _exercises(cells)
    assert sorted(ex) == [1, 2]
    assert HINT.search(ex[1]["markdown"]) and len(ex[1]["code"]) == 1
    assert not HINT.search(ex[2]["markdown"]) and not ex[2]["code"]
    assert "References" not in ex[2]["markdown"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_exercise_has_a_hint_and_a_hidden_solution(path):
    cells = _cells(path)
    exercises = _exercises(cells)
    markdown = [_src(c) for c in cells if c["cell_type"] == "markdown"]
    has_section = any(re.search(r"^##\s+Exercises\b", text, re.M) for text in markdown)
    if path in CHAPTERS or has_section:
        assert exercises, "no '### Exercise N' headings under '## Exercises'"
    assert sorted(exercises) == list(range(1, len(exercises) + 1)), f"numbering: {sorted(exercises)}"
    problems = []
    for number, ex in sorted(exercises.items()):
        text = ex["markdown"]
        solutions = [c for c in ex["code"] if _src(c).startswith(f"# Solution to exercise {number}")]
        if not HINT.search(text):
            problems.append(f"exercise {number}: no ':::{{dropdown}} Hint'")
        if not (SOLUTION.search(text) or solutions):
            problems.append(f"exercise {number}: no ':::{{dropdown}} Solution' and no solution code cell")
        if re.search(r"^:open:", text, re.M):
            problems.append(f"exercise {number}: a dropdown is open by default")
        for cell in solutions:
            tags = set(_tags(cell))
            if not tags & {"hide-cell", "hide-input"}:
                problems.append(f"exercise {number}: solution code not tagged hide-cell or hide-input")
            if tags & {"skip-execution", "raises-exception"} or "NBVAL_SKIP" in _src(cell):
                problems.append(f"exercise {number}: solution code is not run by nbval")
    assert not problems, problems


# 5. Results come from files -------------------------------------------------------------

UNIT = r"(?:s|ms|µs|us|min|h|MiB|GiB|KiB|kB|MB|GB|TB|it/s|patches/s|steps/s|samples/s|img/s)"
MEASURED_CELL = re.compile(rf"(?<![\w.])\d[\d.,]*\s*{UNIT}(?![\w/])")
MEASURED_HEADER = re.compile(rf"(?<![\w])(?:{UNIT}|seconds|/s)(?![\w])|\bms/|\btime\b", re.I)


def _tables(text):
    """The Markdown tables of a text, each as a list of its rows (lines starting with |)."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            rows.append(line)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def test_measured_table_detector():
    typed = "| method | wall ms/patch |\n| --- | --- |\n| h5 | 66.9 |\n"
    units = "| method | time |\n| --- | --- |\n| h5 | 1.2 s |\n"
    fine = "| chapter | network |\n| --- | --- |\n| 1 | ResNet |\n"
    bench = "Run `benchmarks/bench_vae.py`:\n\n| seed | Dice |\n| --- | --- |\n| 0 | 0.9 |\n"
    assert [_is_measured(t) for t in (typed, units, fine, bench)] == [True, True, False, True]


def _is_measured(text):
    if _tables(text) and re.search(r"benchmarks/|bench_\w+\.py", text):
        return True  # a table next to the benchmark that measured it
    for rows in _tables(text):
        header, body = rows[0], rows[2:]
        if MEASURED_HEADER.search(header) or any(MEASURED_CELL.search(r) for r in body):
            return True
    return False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_typed_tables_of_measurements(path):
    bad = [
        n
        for n, cell in enumerate(_cells(path))
        if cell["cell_type"] == "markdown" and "{cite" not in _src(cell) and _is_measured(_src(cell))
    ]
    assert not bad, f"Markdown cells {bad} type a table of measurements: read it from benchmarks/results/"


@pytest.mark.parametrize("result", RESULTS, ids=_ids(RESULTS))
def test_every_results_file_is_read_by_a_notebook(result):
    code = "\n".join(_src(c) for p in NOTEBOOKS for c in _cells(p) if c["cell_type"] == "code")
    assert result.name in code, f"no notebook's code reads benchmarks/results/{result.name}"


# 6. The chapter's opening ---------------------------------------------------------------


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_opens_with_objectives_prerequisites_and_time(path):
    opening = []
    for cell in _cells(path):
        text = _src(cell)
        if cell["cell_type"] == "markdown" and SECTION.search(text):
            opening.append(text[: SECTION.search(text).start()])
            break
        if cell["cell_type"] == "markdown":
            opening.append(text)
    text = "\n".join(opening)
    objectives = re.search(r"^\*\*Learning objectives\*\*.*?\n((?:\s*(?:[-*]|\d+\.)\s+.*\n?)+)", text, re.M)
    assert objectives, "no '**Learning objectives**' followed by a list before the first '##' heading"
    items = re.findall(r"^\s*(?:[-*]|\d+\.)\s+", objectives.group(1), re.M)
    assert len(items) >= 2, "learning objectives: at least two items"
    assert re.search(r"^\*\*Prerequisites\*\*", text, re.M), "no '**Prerequisites**'"
    assert re.search(r"^\*\*Time\*\*[^\n]*\d+\s*(?:min|minutes|h|hours)\b", text, re.M), (
        "no '**Time**' line with minutes or hours"
    )
