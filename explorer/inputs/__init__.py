"""Stage 1, prompts and media: prompt files and public benchmarks (data, importers, overlap), uploads checked before
use (uploads), a request rendered as a typographic image or as speech (typography, speech, speech_engine,
espeak_library) and bound into a prompt (media).
"""
