"""A stand-in for the `espeak-ng` command, built on the espeak-ng library (libespeak-ng, through ctypes).

Run as a script, one process per utterance, exactly as `explorer.inputs.speech` runs the command:

    python espeak_library.py --library LIB --path DIR --stdin --stdout -z -v en-us -s 160 -p 50 -a 100

Why a process per utterance and not a call into the library from the app: the library keeps state from one
utterance to the next (the same text spoken twice in one process gives two different waveforms), while a fresh
process speaks exactly like a fresh `espeak-ng` command; a process also keeps the library's global state and any
crash away from the app's threads. Only the standard library is imported, so a call costs tens of milliseconds.
`LIB` and `DIR` (the folder that holds espeak-ng-data) come from the `espeakng-loader` wheel, which is where they
are looked up when not given.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import os
import sys
import wave

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns once every sample has gone through the callback
_INITIALIZE_DONT_EXIT = 0x8000  # a failed start returns an error instead of ending the process
_POS_CHARACTER = 1
_CHARS_AUTO, _PHONEMES, _ENDPAUSE = 0x0, 0x100, 0x1000
_RATE, _VOLUME, _PITCH = 1, 2, 3  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="espeak-ng's --stdin --stdout options, on libespeak-ng")
    parser.add_argument("--library", help="path of libespeak-ng (default: the espeakng-loader wheel's)")
    parser.add_argument("--path", help="the folder that holds espeak-ng-data (default: the wheel's)")
    parser.add_argument("--version", action="store_true", help="print the library's version and exit")
    parser.add_argument("--stdin", action="store_true", help="read the text from stdin (the only input)")
    parser.add_argument("--stdout", action="store_true", help="write a WAV file to stdout (the only output)")
    parser.add_argument("-z", dest="no_end_pause", action="store_true", help="no pause after the text")
    parser.add_argument("-v", dest="voice", default="en")
    parser.add_argument("-s", dest="speed", type=int, default=None, help="words per minute")
    parser.add_argument("-p", dest="pitch", type=int, default=None)
    parser.add_argument("-a", dest="amplitude", type=int, default=None)
    return parser


def _library(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.library is None or args.path is None:  # run by hand (scripts/setup.sh checks the wheel this way)
        import espeakng_loader

        args.library = args.library or espeakng_loader.get_library_path()
        args.path = args.path or os.path.dirname(espeakng_loader.get_data_path())
    lib = _library(args.library)
    if args.version:
        print(f"espeak-ng library {lib.espeak_Info(None).decode()}")
        return 0
    if not (args.stdin and args.stdout):
        print("only --stdin --stdout is supported", file=sys.stderr)
        return 2
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, args.path.encode(), _INITIALIZE_DONT_EXIT)
    if rate <= 0:
        print(f"espeak-ng library did not start (data folder {args.path})", file=sys.stderr)
        return 1
    chunks: list[bytes] = []

    def collect(wav: ctypes._Pointer, count: int, _events: int) -> int:
        if wav and count > 0:
            chunks.append(ctypes.string_at(wav, 2 * count))
        return 0  # go on

    callback = _CALLBACK(collect)
    lib.espeak_SetSynthCallback(callback)
    # as the command does: the voice, then -s/-a/-p, then the text with its flags (-z clears espeakENDPAUSE)
    if lib.espeak_SetVoiceByName(args.voice.encode()) != 0:
        print(f"espeak-ng library has no voice {args.voice!r}", file=sys.stderr)
        return 1
    for parameter, value in ((_RATE, args.speed), (_VOLUME, args.amplitude), (_PITCH, args.pitch)):
        if value is not None:
            lib.espeak_SetParameter(parameter, value, 0)
    flags = _CHARS_AUTO | _PHONEMES | (0 if args.no_end_pause else _ENDPAUSE)
    text = sys.stdin.buffer.read() + b"\0"
    error = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, flags, None, None) or lib.espeak_Synchronize()
    if error:
        print(f"espeak-ng library failed (error {error})", file=sys.stderr)
        return 1
    out = io.BytesIO()
    with wave.open(out, "wb") as wav_file:
        wav_file.setnchannels(1)
        wav_file.setsampwidth(2)
        wav_file.setframerate(rate)
        wav_file.writeframes(b"".join(chunks))
    sys.stdout.buffer.write(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
