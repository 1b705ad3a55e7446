"""Guidelines: the default set (ours), YAML loading, and bad input."""

import pytest

from paperpack.core.errors import ConfigError
from paperpack.safety_reasoning import Guideline, GuidelineSet


def test_default_set_has_the_perspectives_and_the_two_reflective_steps():
    guidelines = GuidelineSet.default()
    assert guidelines.names == ("intent", "context", "role", "harm", "reflection", "refinement")
    assert [g.kind for g in guidelines][-2:] == ["reflection", "refinement"]
    rendered = guidelines.render().splitlines()
    assert len(rendered) == 6 and rendered[3].startswith("4. Harm: ")
    assert guidelines.select(["perspective"]).names == ("intent", "context", "role", "harm")
    assert guidelines["harm"].title == "Harm"
    assert (
        guidelines == GuidelineSet.default()
        and len({guidelines.fingerprint(), GuidelineSet(list(guidelines)[:2]).fingerprint()}) == 2
    )


def test_yaml_round_trip_in_both_shapes(tmp_path):
    import yaml

    guidelines = GuidelineSet.default()
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(guidelines.to_list()))
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text(yaml.safe_dump({"guidelines": [{"name": "intent", "text": "Say what is asked."}]}))
    assert GuidelineSet.from_yaml(plain) == guidelines
    assert GuidelineSet.from_yaml(wrapped).names == ("intent",)
    assert GuidelineSet.from_yaml(wrapped)["intent"].kind == "perspective"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "at least one guideline, got none"),
        ("guidelines: []", "at least one guideline, got none"),
        ("name: x", "must be a YAML list"),
        ("- {name: a}", "guideline 0 lacks text"),
        ("- {name: a, text: t, why: w}", "unknown key\\(s\\) why"),
        (
            "- {name: a, text: t, kind: rule}",
            "`kind` must be one of 'perspective', 'reflection', 'refinement'",
        ),
        ("- {name: A b, text: t}", "guideline `name` must be lowercase"),
        ("- {name: a, text: t}\n- {name: a, text: u}", "repeated: a"),
        ("- just text", "must be a mapping"),
    ],
)
def test_bad_guideline_files_are_refused_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        GuidelineSet.from_yaml(path)


def test_empty_and_malformed_sets_are_refused():
    with pytest.raises(ConfigError, match="at least one guideline"):
        GuidelineSet([])
    with pytest.raises(ConfigError, match="must be a Guideline"):
        GuidelineSet(["text"])
    with pytest.raises(ConfigError, match="`text` must be a non-empty string"):
        Guideline("a", "  ")
    with pytest.raises(KeyError, match="no guideline 'intent'; names: refinement"):
        GuidelineSet.default().select(["refinement"])["intent"]
    with pytest.raises(ConfigError, match="at least one guideline"):
        GuidelineSet([Guideline("a", "t")]).select(["reflection"])
    with pytest.raises(FileNotFoundError):
        GuidelineSet.from_yaml("/nonexistent/guidelines.yaml")
