"""The reading checks' models for the command-line programs, each loaded with a note on stderr
when it is absent or broken (the run goes on without it). Shared by ``pneumo.predict`` and
``pneumo.calibrate``; not a program itself."""

from __future__ import annotations

import sys

from pneumo import config


def load_segmenter():
    """The lung-field segmenter, or None (with a note on stderr) when it is absent or broken."""
    from pneumo.models.lungs import LungSegmenter

    try:
        return LungSegmenter.load()
    except FileNotFoundError:
        print(f"note: no {config.LUNG_MODEL_FILE} beside the model; no lung-field figures.",
              file=sys.stderr)
    except Exception as err:  # a broken lung model must not stop the run
        print(f"warning: could not load {config.LUNG_MODEL_FILE} ({err}); no lung-field figures.",
              file=sys.stderr)
    return None


def load_scope_check():
    """The scope check: the DICOM header always; the pixel population check when
    ``weights/population.npz`` exists (else a note on stderr)."""
    from pneumo.models.population import load_population
    from pneumo.reading.scope import ScopeCheck

    population = load_population()
    if population is None:
        print(f"note: no {config.POPULATION_FILE} beside the model; only DICOM headers are "
              "checked for the patient's age.", file=sys.stderr)
    return ScopeCheck(population)


def load_quality_checker():
    """The image-quality checker; without its network (or with a broken one) it checks only
    the resolution, and says why on stderr."""
    from pneumo.models.quality import MODEL_UNUSABLE, QualityChecker

    try:
        checker = QualityChecker.load()
    except Exception as err:  # a broken quality model must not stop the run
        path = config.weights_path(config.QUALITY_MODEL_FILE)
        checker = QualityChecker(notice=MODEL_UNUSABLE.format(path=path, error=err))
    if not checker.available and checker.notice:
        print(f"note: {checker.notice}", file=sys.stderr)
    return checker
