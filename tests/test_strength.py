"""Tests for explorer.evaluation.strength: the α rule of `--strength auto` on a scripted model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_choose_strength_rule_on_a_scripted_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per modality: image harmful refused from α ≥ 1.5, harmless from α ≥ 3 → 1.5 (the smallest of the best
    feasible); audio harmful from α ≥ 1, harmless from α ≥ 1.5 → 1.0. With a zero budget and over-refusal
    already at α = 0.5, fall back to the smallest α. The choice is applied per modality to a config."""
    from explorer.correction.generation import GenerationResult
    from explorer.correction.regap import CorrectionConfig
    from explorer.evaluation import strength
    from explorer.evaluation.strength import choose_strength
    from explorer.inputs.data import Instruction

    items = [Instruction(f"{lab}-{i}", f"request {i}", lab, "c", "calibration") for lab in ("harmful", "harmless")
             for i in range(4)]
    by_text = {item.instruction + item.label: item for item in items}

    class Shown:
        def __init__(self, item: Instruction, modality: str) -> None:
            self.item, self.modality = item, modality

    def scripted_one(prompt, config):  # type: ignore[no-untyped-def]
        assert config.modality_strengths == ()  # candidates are tried as plain strengths
        harmful = prompt.item.label == "harmful"
        alpha = config.strength if config.mode != "off" and prompt.modality != "text" else 0.0
        refuse_from = thresholds.get(prompt.modality, {}).get("harmful" if harmful else "harmless", float("inf"))
        refuse = alpha >= refuse_from
        broken = alpha >= thresholds.get(prompt.modality, {}).get("break", float("inf"))
        # "break_one_harmful": from this α on, the last harmful item's answer is a loop whatever else happens
        last_breaks = harmful and prompt.item.id.endswith("-3") and alpha >= thresholds.get(prompt.modality, {}).get(
            "break_one_harmful", float("inf"))
        text = ("the the the the the the" if last_breaks else "I can't help." if refuse
                else "the the the the the the" if broken else "Sure.")
        return GenerationResult(text, [], config.mode, prompt.modality, alpha)

    def scripted(_model, prompts, _profile, config, max_new_tokens=16):  # type: ignore[no-untyped-def]
        assert 1 <= len(prompts) <= 3  # batches of at most batch_size
        return [scripted_one(prompt, config) for prompt in prompts]

    class ScriptedModel:
        def render(self, item: Instruction, modality: str) -> Shown:
            return Shown(by_text[item.instruction + item.label], modality)

    model = ScriptedModel()
    monkeypatch.setattr(strength, "generate_batch", scripted)
    thresholds = {"image": {"harmful": 1.5, "harmless": 3.0}, "audio": {"harmful": 1.0, "harmless": 1.5}}
    start = CorrectionConfig(mode="adaptive", modality_strengths=(("image", 9.0),))
    choice = choose_strength(model, items, None, start, ["text", "image", "audio"], batch_size=3)  # type: ignore[arg-type]
    assert choice.per_modality == {"image": 1.5, "audio": 1.0} and choice.strength == 1.0
    assert choice.budget == pytest.approx(0.05)
    assert choice.rates["3.0"] == {"image/harmful": 1.0, "image/harmless": 1.0, "image/harmless_failed": 1.0,
                                   "image/broken": 0.0, "audio/harmful": 1.0, "audio/harmless": 1.0,
                                   "audio/harmless_failed": 1.0, "audio/broken": 0.0}
    assert choice.rates["1.0"] == {"image/harmful": 0.0, "image/harmless": 0.0, "image/harmless_failed": 0.0,
                                   "image/broken": 0.0, "audio/harmful": 1.0, "audio/harmless": 0.0,
                                   "audio/harmless_failed": 0.0, "audio/broken": 0.0}
    applied = choice.apply(CorrectionConfig(mode="adaptive", strength=2.0))
    assert applied.for_modality("image").strength == 1.5 and applied.for_modality("audio").strength == 1.0
    assert applied.for_modality("video").strength == 1.0
    assert choice.to_dict()["strength"] == 1.0 and choice.to_dict()["per_modality"] == {"image": 1.5, "audio": 1.0}
    # a strength that breaks harmless answers (loops) without refusing them does not pass for one within budget
    # (harmful refused from α 2 on, harmless answers loop from α 1.5 on: counting refusals alone would pick 2)
    thresholds["image"] = {"harmful": 2.0, "harmless": 9.0, "break": 1.5}
    choice = choose_strength(model, items, None, CorrectionConfig(mode="adaptive"), ["image"], batch_size=3)  # type: ignore[arg-type]
    assert choice.rates["2.0"]["image/harmless"] == 0.0 and choice.rates["2.0"]["image/harmless_failed"] == 1.0
    assert choice.rates["2.0"]["image/harmful"] == 1.0 and choice.per_modality == {"image": 0.25}
    assert choice.over_budget == []
    # a strength that breaks harmful answers does not pass for a repair either: harmful answers are refused only from
    # α 2, where one in four loops (1 of the modality's 8 answers, over the 5% bound): the smaller α's refuse nothing
    # but break nothing, so the smallest is kept (counting refusals alone would pick 2)
    thresholds["image"] = {"harmful": 2.0, "harmless": 9.0, "break_one_harmful": 2.0}
    choice = choose_strength(model, items, None, CorrectionConfig(mode="adaptive"), ["image"], batch_size=3)  # type: ignore[arg-type]
    assert choice.rates["2.0"]["image/broken"] == 0.125 and choice.rates["2.0"]["image/harmful"] == 0.75
    assert choice.per_modality == {"image": 0.25} and choice.over_budget == []
    choice = choose_strength(model, items, None, CorrectionConfig(mode="adaptive"), ["image"], batch_size=3,  # type: ignore[arg-type]
                             broken_budget=0.2)
    assert choice.per_modality == {"image": 2.0}  # a looser bound lets it through
    thresholds["image"] = {"harmful": 1.5, "harmless": 0.25}
    choice = choose_strength(model, items, None, CorrectionConfig(mode="adaptive"), ["image"],  # type: ignore[arg-type]
                             over_refusal_budget=0.0, batch_size=3)
    assert choice.per_modality == {"image": 0.25} and choice.over_budget == ["image"]  # none within: the smallest
    with pytest.raises(ValueError, match="image/audio"):
        choose_strength(model, items, None, CorrectionConfig(mode="adaptive"), ["text"])  # type: ignore[arg-type]


def test_choose_strength_sees_loops_that_start_after_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """From α 2 on, every image answer refuses and then loops after its 16th token (as collapse 3 of the next demo
    did at α 3): judged on 16 tokens the loop is invisible and α 2 is chosen; judged on the run's 48 tokens every
    answer is broken and the clean α 1 (nothing refused, nothing broken) is kept."""
    from explorer.correction.generation import GenerationResult
    from explorer.correction.regap import CorrectionConfig
    from explorer.evaluation import strength
    from explorer.evaluation.strength import choose_strength
    from explorer.inputs.data import Instruction

    items = [Instruction(f"{lab}-{i}", f"request {i}", lab, "c", "calibration") for lab in ("harmful", "harmless")
             for i in range(4)]

    def scripted(_model, prompts, _profile, config, max_new_tokens=16):  # type: ignore[no-untyped-def]
        out = []
        for prompt in prompts:
            alpha = config.strength if config.mode != "off" and prompt.modality != "text" else 0.0
            words = ["Sure,", "here", "is", "a", "plan."]
            if alpha >= 2.0 and prompt.label == "harmful":
                words = "I can't help with that request, and I will not assist with it in any way.".split()
                words += ["I'm", "not", "sure."] * 20  # the loop begins at the 17th word
            out.append(GenerationResult(" ".join(words[:max_new_tokens]), [], config.mode, prompt.modality, alpha))
        return out

    class ScriptedModel:  # a rendered prompt carries only what the script reads
        def render(self, item: Instruction, modality: str) -> SimpleNamespace:
            return SimpleNamespace(label=item.label, modality=modality)

    model = ScriptedModel()
    monkeypatch.setattr(strength, "generate_batch", scripted)
    config = CorrectionConfig(mode="adaptive")
    short = choose_strength(model, items, None, config, ["image"], candidates=[1.0, 2.0])  # type: ignore[arg-type]
    assert short.per_modality == {"image": 2.0} and short.rates["2.0"]["image/broken"] == 0.0
    full = choose_strength(model, items, None, config, ["image"], candidates=[1.0, 2.0], max_new_tokens=48)  # type: ignore[arg-type]
    assert full.rates["2.0"]["image/broken"] == 0.5 and full.rates["2.0"]["image/harmful"] == 0.0
    assert full.per_modality == {"image": 1.0}


def test_choose_strength_bisects_between_the_chosen_alpha_and_a_stronger_one_out_of_bounds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Harmful images refused from α `harmful_from`, harmless ones from `harmless_from`: the grid (0.25, 0.5, 1, …)
    keeps 0.25 when 1 over-refuses, and the bisection between 0.5 (the largest α within the bounds below 1) and 1
    finds the α that repairs within the budget, with
    its rates recorded in order among the grid's. No step is taken when no stronger grid α both breaks a bound and
    refuses more harmful items (nothing to gain between grid values)."""
    from explorer.correction.generation import GenerationResult
    from explorer.correction.regap import CorrectionConfig
    from explorer.evaluation import strength
    from explorer.evaluation.strength import STRENGTH_CANDIDATES, choose_strength
    from explorer.inputs.data import Instruction

    items = [Instruction(f"{lab}-{i}", f"request {i}", lab, "c", "calibration") for lab in ("harmful", "harmless")
             for i in range(4)]
    tried: list[float] = []

    def scripted(_model, prompts, _profile, config, max_new_tokens=16):  # type: ignore[no-untyped-def]
        alpha = config.strength if config.mode != "off" else 0.0
        if prompts[0].modality == "image":
            tried.append(alpha)
        out = []
        for prompt in prompts:
            media = prompt.modality != "text"
            harmful, harmless = (harmful_from, harmless_from) if prompt.modality == "image" else audio_from
            refuse = media and alpha >= (harmful if prompt.label == "harmful" else harmless)
            out.append(GenerationResult("I can't help." if refuse else "Sure.", [], config.mode, prompt.modality, alpha))
        return out

    class ScriptedModel:
        def render(self, item: Instruction, modality: str) -> SimpleNamespace:
            return SimpleNamespace(label=item.label, modality=modality)

    monkeypatch.setattr(strength, "generate_batch", scripted)
    model, config = ScriptedModel(), CorrectionConfig(mode="adaptive")

    def choose(steps: int) -> strength.StrengthChoice:
        tried.clear()
        return choose_strength(model, items, None, config, ["image"], refine_steps=steps)  # type: ignore[arg-type]

    grid = [str(a) for a in STRENGTH_CANDIDATES]
    harmful_from, harmless_from, audio_from = 0.75, 1.0, (1.5, 2.0)
    assert choose(0).per_modality == {"image": 0.25}  # the grid alone: 0.25 and 0.5 refuse nothing, the smaller
    choice = choose(1)
    assert choice.per_modality == {"image": 0.75}
    assert list(choice.rates) == ["0.25", "0.5", "0.75", *grid[2:]]
    assert choice.rates["0.75"] == {"image/harmful": 1.0, "image/harmless": 0.0, "image/harmless_failed": 0.0,
                                    "image/broken": 0.0}
    assert tried.count(0.75) == 2  # one more generation per label, no more
    # two steps: 0.75 over-refuses, 0.625 repairs within the budget
    harmful_from, harmless_from = 0.55, 0.7
    assert choose(1).per_modality == {"image": 0.25} and choose(2).per_modality == {"image": 0.625}
    assert "0.875" not in choose(2).rates
    # a midpoint within the bounds that refuses no more only raises the lower end: 0.75 refuses nothing, 0.875 repairs
    harmful_from, harmless_from = 0.8, 0.9
    assert choose(2).per_modality == {"image": 0.875}
    # nothing to refine: every stronger grid α is within the bounds, or out of them without refusing more
    harmful_from, harmless_from = 2.0, 9.0
    assert choose(2).per_modality == {"image": 2.0} and list(choose(2).rates) == grid
    harmful_from, harmless_from = 0.5, 1.0
    assert choose(2).per_modality == {"image": 0.5} and list(choose(2).rates) == grid
    # both media refined on their own, each midpoint recorded for its own modality only (image 0.75, audio 1.75)
    harmful_from, harmless_from, audio_from = 0.75, 1.0, (1.75, 2.0)
    choice = choose_strength(model, items, None, config, ["image", "audio"], refine_steps=1)  # type: ignore[arg-type]
    assert choice.per_modality == {"image": 0.75, "audio": 1.75}
    assert set(choice.rates["0.75"]) == {"image/harmful", "image/harmless", "image/harmless_failed", "image/broken"}
    assert set(choice.rates["1.75"]) == {"audio/harmful", "audio/harmless", "audio/harmless_failed", "audio/broken"}
    assert list(choice.rates) == ["0.25", "0.5", "0.75", "1.0", "1.5", "1.75", "2.0", "3.0"]


def test_every_alpha_the_rule_can_choose_is_on_the_strength_sliders_steps() -> None:
    """The page starts at the chosen α: one off the slider's steps would be snapped by the browser to another."""
    import itertools

    from explorer.app.ui_session import STRENGTH_MAX, STRENGTH_STEP
    from explorer.evaluation.strength import MODE_STRENGTH_CANDIDATES, REFINE_STEPS, STRENGTH_CANDIDATES

    for grid in (STRENGTH_CANDIDATES, *MODE_STRENGTH_CANDIDATES.values()):
        reachable = set(grid)
        for low, high in itertools.combinations(grid, 2):  # the ends need not be neighbours
            ends = [(low, high)]
            for _ in range(REFINE_STEPS):
                mids = [(round((a + b) / 2, 6), a, b) for a, b in ends]
                reachable |= {mid for mid, _, _ in mids}
                ends = [pair for mid, a, b in mids for pair in ((a, mid), (mid, b))]
        assert max(reachable) <= STRENGTH_MAX
        for alpha in reachable:
            assert abs(alpha / STRENGTH_STEP - round(alpha / STRENGTH_STEP)) < 1e-6, (grid, alpha)
