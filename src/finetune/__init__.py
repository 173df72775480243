"""finetune: fine-tune a pretrained GPT-2 on downstream NLP tasks (Hydra -> data -> model -> Accelerate loop -> metrics).

`finetune.load(dir)` gives a predictor for a run's `model/` or `checkpoints/step-N` directory
(finetune.inference). After `import finetune`, transformers' `pipeline("finetune-text-classification"
| "finetune-multiple-choice" | "finetune-question-answering", model=dir)` serves exports too
(finetune.pipelines). Both load lazily: importing the package imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

__all__ = ["load", "Predictor"]


def __getattr__(name: str):
    if name in __all__:
        from finetune import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")


def _register_pipelines() -> None:
    try:
        from finetune.pipelines import register

        register()
    except Exception as err:  # never break `import transformers.pipelines` for the user
        warnings.warn(f"finetune could not register its transformers pipelines: {type(err).__name__}: {err}", stacklevel=2)


class _RegisterPipelinesOnImport(importlib.abc.MetaPathFinder):
    """Registers finetune's pipelines right after `transformers.pipelines` is first imported.

    Registering at `import finetune` would import transformers.pipelines (and torch) there, a few
    seconds for every `python -m finetune.report`; this finder only wraps that module's loading:
    the other finders find it, and once it has run, the pipelines are registered and the finder leaves.
    """

    target = "transformers.pipelines"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.target:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_pipelines()

        spec.loader.exec_module = exec_and_register
        return spec


if _RegisterPipelinesOnImport.target in sys.modules:
    _register_pipelines()
elif not any(isinstance(finder, _RegisterPipelinesOnImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterPipelinesOnImport())
