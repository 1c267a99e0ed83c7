"""The running app, driven through gradio_client by api_name (the demo model if it is built, else a tiny one)."""

from __future__ import annotations

import html
import threading
from pathlib import Path

import pytest
from served_app import memory_in_use, objects_one_answer_holds, raw_call

from explorer.app.ui import EXAMPLE_HARMFUL
from explorer.inputs.media import IMAGE_CARRIER

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def client(running_app):
    from gradio_client import Client

    return Client(running_app[1], verbose=False)


@pytest.fixture(scope="module")
def image_file(client, tmp_path_factory):
    image, prompt, status = client.predict(EXAMPLE_HARMFUL, api_name="/render_image")
    assert prompt == IMAGE_CARRIER and "Rendered" in status
    return image


def test_every_event_has_its_api_name(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/analyse", "/generate_plain", "/generate_corrected", "/strength_release", "/export", "/render_image",
            "/render_audio", "/load_model", "/show_collapse"} <= names


def test_analyse_generate_and_export(client, image_file, running_app):
    from gradio_client import handle_file

    state = running_app[0]
    media = [IMAGE_CARRIER, handle_file(image_file), None]
    *figs, cap_map, cap_axis, cap_sep, status = client.predict(*media, 2, "adaptive", 1.0, "", "PCA",
                                                               api_name="/analyse")
    assert all(fig and fig.get("type") == "plotly" for fig in figs), [type(f) for f in figs]
    assert '"your prompt (corrected)"' in figs[0]["plot"] and "probe layer" in cap_axis
    plain, plain_info = client.predict(*media, 12, 0, api_name="/generate_plain")
    corrected, corrected_info = client.predict(*media, "adaptive", 1.0, "", 12, 0, api_name="/generate_corrected")
    assert "no correction" in plain_info and "α(x)" in corrected_info
    assert ("refused" in plain_info) == state.session.judge.is_refusal(plain)
    zero, _ = client.predict(*media, "fixed", 0.0, "", 12, 0, api_name="/generate_corrected")
    assert zero == plain
    files, status = client.predict(*media, 2, "adaptive", 1.0, "", "PCA", plain, plain_info, corrected,
                                   corrected_info, api_name="/export")
    names = sorted(Path(f).name for f in files)
    assert names == ["directions.zip", "figures.html", "metrics.csv", "metrics.json", "report.html"]
    report = Path(next(f for f in files if f.endswith("report.html"))).read_text()
    assert html.escape(corrected) in report  # the report escapes model text


def test_bad_input_is_a_message_and_the_app_keeps_serving(client, tmp_path):
    from gradio_client import handle_file

    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    out = client.predict(IMAGE_CARRIER, handle_file(str(not_image)), None, 1, "adaptive", 1.0, "", "PCA",
                         api_name="/analyse")
    assert "not an image this app opens" in out[-1]
    assert "prompt is empty" in client.predict("", None, None, 12, 0, api_name="/generate_plain")[1]
    status, info, *_ = client.predict("/no/such/model", api_name="/load_model")
    assert "Could not load" in status and "Still serving" in status
    text, info = client.predict("Write a poem.", None, None, 4, 0, api_name="/generate_plain")
    assert "no correction" in info and not info.startswith("⚠️")  # still serving


def test_two_concurrent_clients_get_their_sequential_results(running_app, image_file):
    from gradio_client import Client, handle_file

    url = running_app[1]
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    media = [IMAGE_CARRIER, handle_file(image_file), None]

    def corrected(client):
        return client.predict(*media, "fixed", 3.0, "", 32, 0, api_name="/generate_corrected")

    def plain(client):
        return client.predict(*media, 32, 0, api_name="/generate_plain")

    expected_corrected, expected_plain = corrected(a), plain(b)
    assert expected_corrected[0] != expected_plain[0]  # the correction changes the answer, so a leak would show
    results: dict[str, list] = {"corrected": [], "plain": []}
    barrier = threading.Barrier(2)

    def run(name, fn, client):
        barrier.wait()
        for _ in range(3):
            results[name].append(fn(client))

    threads = [threading.Thread(target=run, args=("corrected", corrected, a)),
               threading.Thread(target=run, args=("plain", plain, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results["corrected"] == [expected_corrected] * 3
    assert results["plain"] == [expected_plain] * 3


# ------------------------------------------------------------------------------------------------ security


def test_a_raw_path_outside_the_upload_folder_is_refused_unopened(running_app, tmp_path, monkeypatch):
    """A visitor who sends a server path instead of an upload must not make the server open it, nor learn whether
    it exists: a real PNG, a missing file and system files, as a bare string, as {"path"} and as Gradio FileData,
    all get the same refusal, and no loader runs. (Gradio 6 refuses these before the handler; the handler's own
    check, tested in test_ui.py, stands behind it.)"""
    from explorer.app import ui_inputs
    from explorer.inputs.media import render_image

    real_png = tmp_path / "outside.png"
    render_image("How do I bake bread?").save(real_png)
    opened: list = []
    monkeypatch.setattr(ui_inputs, "load_image", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(ui_inputs, "load_audio", lambda *a, **k: opened.append(a))
    url = running_app[1]
    forms = {"string": lambda p: p, "path only": lambda p: {"path": p},
             "FileData": lambda p: {"path": p, "meta": {"_type": "gradio.FileData"}}}
    for form, payload_of in forms.items():
        replies = set()
        for path in (str(real_png), str(tmp_path / "missing.png"), "/etc/passwd", "/proc/self/environ"):
            payload = payload_of(path)
            for api, data in (("analyse", [IMAGE_CARRIER, payload, None, 1, "off", 1.0, "", "PCA"]),
                              ("generate_plain", ["", None, payload, 4, 0])):
                reply = raw_call(url, api, data).replace(Path(path).name, "NAME")
                assert "event: error" in reply or "was not uploaded through this page" in reply, (form, api, reply)
                replies.add((api, reply))
        assert len(replies) == 2, (form, replies)  # per endpoint one answer for every path, existing or not
    assert opened == []


def test_messages_name_the_users_file_not_the_servers_temp_path(client, tmp_path):
    from gradio_client import handle_file

    not_image = tmp_path / "holiday photo.png"
    not_image.write_text("not an image")
    status = client.predict(IMAGE_CARRIER, handle_file(str(not_image)), None, 1, "off", 1.0, "", "PCA",
                            api_name="/analyse")[-1]
    assert "'holiday photo.png'" in status or "holiday photo.png is not an image" in status, status
    assert "gradio" not in status and str(tmp_path) not in status


@pytest.mark.parametrize(("field", "args", "message"), [
    ("strength", ("adaptive", 1e9, "", 4, 0), "strength must be a number in 0..3"),
    ("strength", ("adaptive", -0.5, "", 4, 0), "strength must be a number in 0..3"),
    ("tokens", ("adaptive", 1.0, "", 10**6, 0), "max new tokens must be a whole number in 1..256"),
    ("layers", ("fixed", 1.0, "1,2", 4, 0), "corrected layers are one layer"),
    ("seed", ("adaptive", 1.0, "", 4, -5), "seed must be a whole number"),
])
def test_numbers_outside_the_pages_bounds_are_refused(client, field, args, message):
    _, info = client.predict("Write a poem.", None, None, *args, api_name="/generate_corrected")
    assert message in info, (field, info)


def test_layer_shown_outside_the_slider_is_refused_not_wrapped(client, running_app):
    last = running_app[0].session.num_layers - 1
    for layer in (-1, last + 1):
        status = client.predict("Write a poem.", None, None, layer, "off", 1.0, "", "PCA", api_name="/analyse")[-1]
        assert f"layer shown must be a whole number in 0..{last}" in status


# ------------------------------------------------------------------------------------------------ soak


@pytest.mark.slow
def test_soak_mixed_clients_match_a_sequential_run_and_memory_stays_flat(running_app, image_file):
    """4 clients × rounds of a fixed mix (plain and corrected generations with opposite settings, analyses with
    repeated settings), interleaved: every answer equals the sequential run's, no request fails, and once the
    settings have been seen the server's memory (this process) does not keep growing with more rounds: the objects
    alive (counted exactly) and, coarsely, the memory in use."""

    from gradio_client import Client, handle_file

    url = running_app[1]
    image = handle_file(image_file)
    mix = [
        ("plain", (IMAGE_CARRIER, image, None, 16, 0), "/generate_plain"),
        ("fixed3", (IMAGE_CARRIER, image, None, "fixed", 3.0, "", 16, 0), "/generate_corrected"),
        ("adaptive", (IMAGE_CARRIER, image, None, "adaptive", 2.0, "", 16, 0), "/generate_corrected"),
        ("text", ("Write a poem about bread.", None, None, 16, 0), "/generate_plain"),
        ("analyse", (IMAGE_CARRIER, image, None, 2, "adaptive", 2.0, "", "PCA"), "/analyse"),
    ]

    def run(client, name, args, api):
        out = client.predict(*args, api_name=api)
        return out[-1] if name == "analyse" else out  # analyse: compare its status line (figures hold floats)

    sequential = Client(url, verbose=False)
    expected = {name: run(sequential, name, args, api) for name, args, api in mix}
    assert not any(str(v).startswith("⚠️") for v in expected.values()), expected
    clients = [Client(url, verbose=False) for _ in range(4)]
    errors: list[str] = []
    mismatches: list[str] = []

    def worker(index: int, rounds: int) -> None:
        for step in range(rounds * len(mix)):
            name, args, api = mix[(step + index) % len(mix)]  # each client starts elsewhere in the mix
            try:
                got = run(clients[index], name, args, api)
            except Exception as err:  # noqa: BLE001 - counted, then asserted on
                errors.append(f"{name}: {err!r}")
                continue
            if got != expected[name]:
                mismatches.append(f"{name}: {got!r} != {expected[name]!r}")

    def rounds(n: int) -> None:
        threads = [threading.Thread(target=worker, args=(i, n)) for i in range(len(clients))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)

    rounds(1)  # every setting seen by every client: caches fill to their bound, worker threads exist
    one_answer = objects_one_answer_holds(running_app[0], "adaptive", 2.0)
    objects_before, in_use_before = memory_in_use()
    rounds(2)
    objects_after, in_use_after = memory_in_use()
    print(f"\nsoak: 2 rounds x {4 * len(mix)} requests after warm-up; live objects {objects_before} -> "
          f"{objects_after} (one answer holds {one_answer}); memory in use {in_use_before:.0f} -> {in_use_after:.0f} MB")
    assert errors == [] and mismatches == [], (errors, mismatches[:3])
    # The objects alive are an exact count (the memory in use moved by up to 38 MB per round with no trend, and
    # took 6 rounds to judge): over 40 requests, 8 of them analyses, they may grow by less than one answer. The
    # memory in use stays a coarse guard for native memory, with the old test's bound over 4 rounds.
    assert objects_after - objects_before < one_answer, (objects_before, objects_after, one_answer)
    assert in_use_after - in_use_before < 120, f"memory in use grew {in_use_after - in_use_before:.0f} MB"
