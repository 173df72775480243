"""Prompts for scoring a pretrained LM without training (mode=zeroshot), built the way
lm-evaluation-harness builds them, from a task's `prompt:` section (finetune.config.PromptConfig).

* `template` is text with placeholders named after the task's column roles: `{text}`, `{text_pair}`
  (classification, entailment, similarity), `{context}` (multiple choice; `{choices[i]}` is the
  row's i-th candidate) and `{context}`, `{question}` (span QA). Filters follow a bar:
  `{text_pair|strip|period}` strips the text and ends it with a full stop unless it has one (the
  harness's MNLI prompt). `{{` and `}}` are literal braces.
* The answers of a row are `choices[label]` for every label (label order), or, for multiple choice
  without `choices`, the row's own candidates. Each is scored as the continuation
  `delimiter + answer` of the prompt (the harness's `target_delimiter`, " ").
* K-shot: K training rows, drawn once with a fixed seed, each written as
  `prompt + delimiter + gold answer + fewshot_delimiter` (harness: "\\n\\n"), before every prompt.
  Unlike the harness, which draws new demonstrations per example, every example of a run gets the
  same ones, so a run is one fixed prompt prefix.
* Contextual calibration (Zhao et al. 2021) scores the same answers after a content-free prompt:
  the same demonstrations and template with every placeholder but the candidates set to
  `content_free` ("N/A").
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

from finetune.errors import ConfigError, DataError

FILTERS = {
    "strip": str.strip,
    "period": lambda text: text if text.endswith(".") else text + ".",
}
# Roles that are answers or bookkeeping, never prompt text.
NOT_PLACEHOLDERS = ("label", "answers", "id")
_FIELD = re.compile(r"^(?P<role>\w+)(?:\[(?P<index>\d+)\])?(?P<filters>(?:\|\w+)*)$")


@dataclass(frozen=True)
class Field:
    role: str
    index: int | None
    filters: tuple[str, ...]
    written: str  # as it appears in the template, for messages


@dataclass(frozen=True)
class Template:
    parts: tuple  # literal strings and Fields, in order

    @classmethod
    def parse(cls, template: str, key: str) -> "Template":
        try:
            pieces = list(string.Formatter().parse(template))
        except ValueError as err:
            raise ConfigError(f"{key} = {template!r}: {err} (write {{{{ and }}}} for literal braces)") from None
        parts = []
        for literal, name, spec, conversion in pieces:
            if literal:
                parts.append(literal)
            if name is None:
                continue
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            match = _FIELD.match(name)
            if not name or spec or conversion or match is None:
                raise ConfigError(f"{key}: placeholder {written} is not of the form {{role}}, {{role[i]}} or {{role|filter}}")
            filters = tuple(f for f in match["filters"].split("|") if f)
            unknown = [f for f in filters if f not in FILTERS]
            if unknown:
                raise ConfigError(f"{key}: placeholder {written} has unknown filter '{unknown[0]}'; filters are {', '.join(FILTERS)}")
            index = int(match["index"]) if match["index"] is not None else None
            parts.append(Field(match["role"], index, filters, written))
        return cls(tuple(parts))

    @property
    def fields(self) -> list[Field]:
        return [part for part in self.parts if isinstance(part, Field)]

    @property
    def roles(self) -> set[str]:
        return {f.role for f in self.fields}

    def render(self, row: dict, where: str, content_free: str | None = None) -> str:
        """The template filled from a row; with `content_free`, every field except the candidates is that text."""
        out = []
        for part in self.parts:
            if not isinstance(part, Field):
                out.append(part)
                continue
            if content_free is not None and part.role != "choices":
                value = content_free
            else:
                value = row[part.role]
                if part.index is not None:
                    if part.index >= len(value):
                        raise DataError(f"{where}: placeholder {part.written} needs candidate {part.index + 1}, "
                                        f"but the row has {len(value)} candidates")
                    value = value[part.index]
            value = "" if value is None else str(value)
            for name in part.filters:
                value = FILTERS[name](value)
            out.append(value)
        return "".join(out)


def placeholder_roles(head_cls, source_roles) -> list[str]:
    """Roles a template may name: the head's text roles that the task's source maps to a column."""
    readable = [r for r in head_cls.required_roles + head_cls.optional_roles if r not in NOT_PLACEHOLDERS]
    return [r for r in readable if r in source_roles]


class Prompt:
    """A task's checked prompt: the text of every request, its answers and the demonstrations."""

    def __init__(self, task, head_cls, source_roles):
        self.task = task
        self.config = prompt = task.prompt
        self.generative = head_cls.zero_shot == "generated"
        self.multiple_choice = "choices" in head_cls.required_roles
        if not prompt.template:
            raise ConfigError(no_prompt_message(task, self.generative))
        key = "task.prompt.template"
        self.template = Template.parse(prompt.template, key)
        roles = placeholder_roles(head_cls, source_roles)
        for f in self.template.fields:
            if f.role not in roles:
                raise ConfigError(f"{key} of task '{task.name}': placeholder {f.written} is not a column role of this task; "
                                  f"its roles are {', '.join('{' + r + '}' for r in roles)}")
            if f.role == "choices" and f.index is None:
                raise ConfigError(f"{key}: {f.written} is the list of candidates; name one of them, e.g. {{choices[0]}}")
            if f.role != "choices" and f.index is not None:
                raise ConfigError(f"{key}: {f.written} indexes '{f.role}', which is one text; only {{choices[i]}} takes an index")
        if self.generative:
            missing = [r for r in ("context", "question") if r not in self.template.roles]
            if missing:
                raise ConfigError(f"{key} of task '{task.name}' (span QA) must contain {{context}} and {{question}}; "
                                  f"it has no {', '.join('{' + m + '}' for m in missing)}")
            if prompt.choices:
                raise ConfigError(f"task.prompt.choices of '{task.name}': span QA generates its answer; remove choices")
            if prompt.calibration != "none":
                raise ConfigError(f"task.prompt.calibration={prompt.calibration} of '{task.name}': calibration reweights "
                                  f"scored answers; span QA generates its answer (use none)")
        elif task.labels is None:
            raise ConfigError(f"task '{task.name}' is a regression task (labels: null): zero-shot scoring compares the "
                              f"likelihood of answers, so it needs label names and task.prompt.choices")
        self.choices = self._checked_choices() if prompt.choices else None
        if self.choices is None and not self.multiple_choice and not self.generative:
            raise ConfigError(f"task.prompt.choices of '{task.name}' is missing: map every label "
                              f"({', '.join(task.labels)}) to its answer text, e.g. {{{task.labels[0]}: ...}}")

    def _checked_choices(self) -> list[str]:
        task, choices = self.task, self.config.choices
        labels = list(task.labels)
        for label, answer in choices.items():
            if isinstance(label, bool) or isinstance(answer, bool):
                what = f"key {label!r}" if isinstance(label, bool) else f"answer of {label!r} ({answer!r})"
                raise ConfigError(f"task.prompt.choices of '{task.name}': the {what} is a YAML boolean (unquoted yes/no/"
                                  f"true/false/on/off are read as booleans); write it in quotes, e.g. \"yes\"")
            if str(label) not in labels:
                raise ConfigError(f"task.prompt.choices of '{task.name}': '{label}' is not a label of the task "
                                  f"(labels: {', '.join(labels)})")
            if not isinstance(answer, str) or not answer.strip():
                raise ConfigError(f"task.prompt.choices.{label} of '{task.name}' is {answer!r}: an answer must be non-empty text")
        missing = [label for label in labels if label not in choices]
        if missing:
            raise ConfigError(f"task.prompt.choices of '{task.name}' has no answer for label(s) {', '.join(missing)} "
                              f"(every label of {labels} needs one)")
        return [choices[label] for label in labels]

    # ---------------------------------------------------------------- per row
    def text(self, row: dict, where: str, content_free: bool = False) -> str:
        return self.template.render(row, where, self.config.content_free if content_free else None)

    def answers(self, row: dict) -> list[str]:
        """The candidate answer texts of a row (what accuracy_norm divides by: no delimiter)."""
        return list(self.choices) if self.choices is not None else list(row["choices"])

    def gold_answer(self, row: dict, where: str) -> str:
        if self.generative:
            texts = list(row["answers"]["text"])
            if not texts:
                raise DataError(f"{where}: a demonstration needs an answer, and this row has none")
            return texts[0]
        return self.answers(row)[row["label"]]

    # ---------------------------------------------------------------- K-shot
    def demonstrations(self, train_rows, seed: int, where: str) -> tuple[str, list[int]]:
        """(the prefix put before every prompt, the train rows it shows): K rows drawn once with `seed`."""
        shots = self.config.shots
        if shots == 0:
            return "", []
        if train_rows is None or len(train_rows) < shots:
            have = 0 if train_rows is None else len(train_rows)
            raise DataError(f"task.prompt.shots={shots} but the train split ({where}) has {have} rows: "
                            f"set task.prompt.shots<={have}")
        picked = random.Random(seed).sample(range(len(train_rows)), shots)
        rows = train_rows.select(picked).to_list()
        parts = [self.text(row, f"{where} row {i + 1}") + self.config.delimiter + self.gold_answer(row, f"{where} row {i + 1}")
                 + self.config.fewshot_delimiter for i, row in zip(picked, rows)]
        return "".join(parts), picked


def no_prompt_message(task, generative: bool) -> str:
    message = (f"task '{task.name}' has no prompt (task.prompt.template is empty): mode=zeroshot needs one; add a "
               f"`prompt:` section with template (and choices: label -> answer text) to its task YAML "
               f"(configs/task/{task.name}.yaml, or task/{task.name}.yaml in a --config-dir), or set "
               f"task.prompt.template=... and task.prompt.choices=...")
    if task.labels is None and not generative:
        message += f"; '{task.name}' is a regression task, which zero-shot answer scoring does not cover"
    return message
