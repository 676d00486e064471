"""Plug-ins that run evaluation harnesses (lm-evaluation-harness, lmms-eval) on a model with a hookkit intervention.

* :mod:`hookkit.integrations.lm_eval`: the ``hookkit`` model for lm-evaluation-harness (text tasks:
  ``loglikelihood``, ``loglikelihood_rolling``, ``generate_until``).
* :mod:`hookkit.integrations.lmms_eval`: the ``hookkit`` model for lmms-eval (image + text tasks, through the model
  family's processor and chat template exactly as :func:`hookkit.generation.generate` does it).
* :mod:`hookkit.integrations.tasks`: offline example tasks (YAML + local data) and the passkey exporter.

Neither harness is a hookkit dependency: each plug-in module imports its harness and fails with an install hint
when it is missing. This package itself imports nothing heavy.
"""
