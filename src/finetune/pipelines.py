"""transformers pipelines for exported models: `pipeline("finetune-...", model=<run dir>/model)`.

`import finetune` registers them (once `transformers.pipelines` is imported, see finetune/__init__.py).
Three task names (a head's `pipeline_task`), one per kind of input, as transformers names its own
tasks; the `finetune-` prefix leaves transformers' built-in `text-classification` (one sequence
per example) as it is for every other model:

- `finetune-text-classification`: classification, entailment and similarity heads (a similarity
  model trained on both orders scores both, as in training; regression gives a score);
- `finetune-multiple-choice`: a context and its candidate answers;
- `finetune-question-answering`: extractive QA (transformers 5 has no question-answering pipeline).

The pipeline loads the directory's transformers weights as usual and hands every call to
`finetune.inference.Predictor` on that same model, so it predicts exactly what `finetune.load`
and `mode=predict` predict. A whole list is one call: the predictor batches it (`batch_size`).
"""

from __future__ import annotations

from pathlib import Path

from transformers import Pipeline

from finetune.errors import ModelError

def tasks() -> dict[str, tuple[str, ...]]:
    """Registered task name -> the heads it serves."""
    from finetune.models.heads import HEADS

    served = {}
    for name, head_cls in HEADS.items():
        if head_cls.pipeline_task:
            served.setdefault(head_cls.pipeline_task, ())
            served[head_cls.pipeline_task] += (name,)
    return served


def task_for_head(head: str) -> str | None:
    """The registered pipeline task that serves a head."""
    from finetune.models.heads import HEADS

    return HEADS[head].pipeline_task


class FinetunePipeline(Pipeline):
    """A fine-tuned export behind transformers' `pipeline` interface; predictions from `Predictor`."""

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, model, tokenizer=None, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        from finetune.data.formats import configure_tokenizer
        from finetune.inference import DEFAULT_BATCH_SIZE, Predictor
        from finetune.models.artifacts import exported_class, task_model_from_export, trained_kind
        from finetune.models.manifest import MANIFEST, read_manifest

        model_dir = Path(getattr(self.model, "name_or_path", "") or ".")
        if trained_kind(model_dir) == "checkpoint":
            raise ModelError(f"'{model_dir}' is a training checkpoint: pass the run's model/ directory to pipeline(), "
                             f"or use finetune.load('{model_dir}')")
        if not (model_dir / MANIFEST).is_file():
            raise ModelError(f"'{model_dir}' is not a finetune export (no {MANIFEST}): the {self.task} pipeline serves "
                             f"the model/ directory of a finetune run")
        manifest = read_manifest(model_dir, f"'{model_dir}'")
        head, served = manifest.head, tasks()
        if self.task in served and head not in served[self.task]:
            raise ModelError(f"'{model_dir}' has a '{head}' head: use pipeline(\"{task_for_head(head)}\", model=...) "
                             f"(the {self.task} pipeline serves {', '.join(served[self.task])} heads)")
        expected = exported_class(manifest)
        if expected != "AutoModel" and type(self.model).__name__ != expected:
            raise ModelError(f"'{model_dir}' was loaded as {type(self.model).__name__}, but its weights are a {expected}")
        if self.tokenizer is None:
            raise ModelError(f"'{model_dir}': no tokenizer was loaded with the model")
        configure_tokenizer(self.tokenizer, bool(manifest.gpt1_tokens))  # as finetune.load reads it
        self.predictor = Predictor(task_model_from_export(self.model, manifest, model_dir), self.tokenizer, manifest,
                                   device=self.device, batch_size=self._batch_size or DEFAULT_BATCH_SIZE)

    def _sanitize_parameters(self, **kwargs):
        if kwargs:
            raise TypeError(f"unknown parameter(s) {sorted(kwargs)} for the finetune pipeline (it takes batch_size)")
        return {}, {}, {}

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        """One example gives one prediction (a dict), a list gives a list; see finetune.inference.Predictor."""
        self._sanitize_parameters(**kwargs)
        return self.run_single(inputs, {}, {"batch_size": batch_size or self.predictor.batch_size}, {})

    def preprocess(self, inputs):
        rows, single = self.predictor.examples(inputs)
        return {"rows": rows, "single": single}

    def _forward(self, model_inputs, batch_size: int):
        return {"predictions": self.predictor.predict_examples(model_inputs["rows"], batch_size), "single": model_inputs["single"]}

    def postprocess(self, model_outputs):
        predictions = model_outputs["predictions"]
        return predictions[0] if model_outputs["single"] else predictions


def register() -> None:
    """Add the finetune tasks to transformers' pipeline registry (idempotent).

    No model classes of their own: `pipeline()` then loads the class the directory's config.json
    names (GPT2ForSequenceClassification, GPT2ForQuestionAnswering, or GPT2Model for multiple choice).
    """
    from transformers.pipelines import PIPELINE_REGISTRY

    for task in tasks():
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not FinetunePipeline:
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=FinetunePipeline, pt_model=(), type="text")
