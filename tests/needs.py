"""Skip marks for tests that need something the machine may lack, each naming what brings it."""

from __future__ import annotations

import pytest

from explorer.inputs.speech_engine import speech_unavailable_reason

#: Speech through whichever engine is here (Debian's espeak-ng, or the library from the espeakng-loader wheel that
#: `bash scripts/setup.sh` installs).
needs_speech = pytest.mark.skipif(speech_unavailable_reason() is not None,
                                  reason=f"no speech engine: {speech_unavailable_reason()}")
