"""What a lesson tells the learner: whose version of an exercise ran, the conventions an exercise
relies on, one symbol per meaning (issue 48, "What the learner sees"). Static: nothing is run."""

import re

import nbformat
import pytest

from diffuse_edu import config
from diffuse_edu.exercises import check, whose
from diffuse_edu.exercises.guidance import DROP_LABELS

ROOT = config.PROJECT_ROOT


def lesson(number: str) -> nbformat.NotebookNode:
    return nbformat.read(next((ROOT / "solutions").glob(f"{number}_*.ipynb")), as_version=4)


def test_whose_names_the_learner_or_the_library():
    def drop_labels(labels, p_null, null_label, *, generator=None):
        raise NotImplementedError

    def patchify(x, p):
        return x

    def unpatchify(tokens, p, h, w):
        return tokens

    fallback = check(drop_labels, DROP_LABELS, quiet=True)  # unfinished: the library's version
    assert whose(fallback) == "the library's drop_labels"
    assert whose(drop_labels) == "your drop_labels"
    assert whose(patchify, fallback, unpatchify, patchify) == (
        "your patchify and unpatchify, the library's drop_labels")


def code_of(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def told_text(nb) -> str:
    """The markdown a learner reads about what ran: every markdown cell but an exercise's own text
    (the one right before an exercise cell, which may well speak of the function they write)."""
    cells = nb.cells
    return "\n".join(c.source for c, after in zip(cells, [*cells[1:], None])
                     if c.cell_type == "markdown"
                     and not (after is not None and "# BEGIN SOLUTION" in after.source))


# lessons whose exercises later drive experiments
LATER_RUN = ["03", "05", "07", "08", "09", "10", "11", "12", "13", "14", "15", "16", "17", "19"]


@pytest.mark.parametrize("number", LATER_RUN)
def test_a_lesson_says_whose_version_ran_through_the_one_helper(number):
    nb = lesson(number)
    code = code_of(nb)
    assert "whose(" in code, (f"lesson {number} never prints whose version of its exercises ran "
                              "(exercises.whose)")
    assert '__module__ == "__main__"' not in code and "__module__ == '__main__'" not in code, (
        f"lesson {number} tests whose version ran by hand: use exercises.whose")
    assert ("(yours)" not in code
            and '"DDIM (your ' not in code), f"lesson {number} labels a result as yours outright"


@pytest.mark.parametrize("number", LATER_RUN)
def test_what_the_learner_reads_never_claims_their_version_ran(number):
    """The lesson carries on with the library's version where a check failed: its text cannot say
    "your X" runs, only "the checked X" (the output says whose)."""
    nb = lesson(number)
    checked = set(re.findall(r"^(\w+) = check\(", code_of(nb), flags=re.MULTILINE))
    text = told_text(nb)
    for name in checked:
        assert not re.search(rf"\byour `?{name}\b", text), f"lesson {number} says 'your {name}' ran"
    generic = re.findall(r"\b(?:with|runs?|through|by) your "
                         r"(?:loss|block|step|pieces|tokenizer|Euler sampler|"
                         r"guided forward pass|delta|two functions)\b", text)
    assert not generic, f"lesson {number}: {generic}"
    assert "Your two functions now run" not in text


def math_of(number: str) -> str:
    text = "\n".join(c.source for c in lesson(number).cells if c.cell_type == "markdown")
    return " ".join(re.findall(r"\$\$?(.+?)\$\$?", text, flags=re.DOTALL))


def uses(symbol: str, math: str) -> bool:
    if symbol.startswith("\\"):
        return re.search(re.escape(symbol) + r"(?![A-Za-z])", math) is not None
    return re.search(rf"(?<![A-Za-z\\]){symbol}(?![A-Za-z])", math) is not None


@pytest.mark.parametrize("symbol, lessons", [
    ("\\lambda", {"00", "10"}),  # the KL weight
    ("u", {"00", "12"}),  # the flow's velocity
    ("s", {"00", "08", "09", "18"}),  # the guidance scale
])
def test_one_symbol_one_meaning(symbol, lessons):
    numbers = [p.name[:2] for p in sorted((ROOT / "solutions").glob("*.ipynb"))]
    found = {n for n in numbers if uses(symbol, math_of(n))}
    assert found <= lessons, (f"${symbol}$ appears in lessons {sorted(found - lessons)}, where it "
                              "means something else")


def test_v_is_the_v_target_only():
    assert not uses("v",
                    math_of("10")), "lesson 10 calls its decoder's variance v (v is the v target)"


def test_the_symbols_table_lists_each_symbol_once_with_its_lesson():
    cell = next(c.source for c in lesson("00").cells if "## 4. Notation" in c.source)
    rows = [line.split(" | ") for line in cell.splitlines() if line.startswith("| `")]
    assert rows and all(len(r) == 4 and re.fullmatch(r"\d\d \|", r[-1].strip()) for r in rows), (
        "every row of the notation table names the lesson that introduces its symbol")
    symbols = [re.split(r"\s*=|,", r[1].strip().strip("$"))[0].strip() for r in rows
               if r[1].strip()]
    repeated = {s for s in symbols if symbols.count(s) > 1}
    assert not repeated, f"listed more than once: {repeated}"
    for symbol in ("\\lambda", "s", "u", "v"):
        assert symbols.count(symbol) == 1, f"${symbol}$ is not listed exactly once: {symbols}"


def test_the_conventions_an_exercise_relies_on_are_stated():
    dit = lesson("12")
    exercise = next(c.source for c in dit.cells if "def dit_block(" in c.source)
    assert ("block = DiTBlock(" in exercise
            and "print(block)" in exercise), "lesson 12 has no block to print"
    assert "`block.attention(h)`" in "\n".join(c.source for c in dit.cells
                                               if c.cell_type == "markdown")
    assert "`x0_to_v(x_t, x0, alpha_bar)`" in told_text(lesson("14")) + "\n".join(
        c.source for c in lesson("14").cells if c.cell_type == "markdown")
    repaint = next(c.source for c in lesson("11").cells if "Exercise: RePaint's step" in c.source)
    assert "`repaint_step` itself" in repaint and "`inpaint`" in repaint


def exercise_text(nb, name: str) -> str:
    """The markdown right before the exercise cell that defines ``name``, and that cell's def and
    docstring (what the student version keeps of it)."""
    cells = nb.cells
    i = next(i for i, c in enumerate(cells) if f"def {name}(" in c.source)
    head = cells[i].source.split(f"def {name}(", 1)[1].split("# BEGIN SOLUTION", 1)[0]
    return cells[i - 1].source + "\n" + head


def test_lessons_12_to_14_leave_the_key_step_to_the_learner():
    """Issue 47: what is on screen states the definitions and conventions, not the exercise's
    mechanism (before, the text transcribed the code or its closed form)."""
    l12, l13, l14 = lesson("12"), lesson("13"), lesson("14")
    markdown = {n: "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
                for n, nb in (("12", l12), ("13", l13), ("14", l14))}
    assert r"\odot \mathrm{Attn}" not in markdown["12"], (
        "lesson 12's Math writes the DiT block out")
    # the chunks' order
    assert r"(\beta_a, \gamma_a, g_a, \beta_m, \gamma_m, g_m)" in markdown["12"]
    assert r"1 + \gamma" in markdown["12"]  # the modulation's convention
    assert "(1 + gamma_a) + beta_a" not in exercise_text(l12, "dit_block")
    loss = exercise_text(l12, "flow_matching_loss")
    assert "(eps - x0))^2" not in loss and "`model(x_tau, tau * 1000)`" not in loss
    assert r"t = 1000\,\tau" in loss and "`(B,)`" in loss
    assert r"(\tau_{next} - \tau)\,u" not in exercise_text(l12, "flow_euler")
    forward = exercise_text(l13, "lora_forward")
    assert "layer.lora_B(layer.lora_A(x))" not in forward and "return the base" not in forward
    assert all(f"`layer.{a}`" in forward for a in ("base", "lora_A", "lora_B", "scale", "merged"))
    prior = exercise_text(l13, "prior_preservation_loss")
    assert "plus `weight` times" not in prior and "weight x its loss" not in prior
    assert "`objective(model, x0, cond=..., generator=generator)`" in prior
    assert "`prior_label`" in prior
    assert r"\tilde x_0 = \frac" not in markdown["14"], "lesson 14's Math solves the step for x0"
    assert r"\alpha_{t''} - (\sigma_{t''}/\sigma_t)" not in markdown["14"]
