"""The running app, driven through gradio_client by api_name (the demo model if it is built, else a tiny one)."""

from __future__ import annotations

import html
import socket
import threading
from pathlib import Path

import pytest

from explorer.models import DEMO_MODEL_DIR
from explorer.media import IMAGE_CARRIER
from explorer.ui import EXAMPLE_HARMFUL
from explorer.ui_session import AppSettings, AppState

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_settings(tiny_model_dir, cache_dir: Path) -> AppSettings:
    """The demo model when it exists (assets/demo_model/manifest.json), else the tiny llava; small calibration."""
    if (DEMO_MODEL_DIR / "manifest.json").is_file():
        return AppSettings(model="demo", device="cpu", calibration_limit=8, cache_dir=cache_dir)
    return AppSettings(model=str(tiny_model_dir("llava")), device="cpu", calibration_limit=8, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def running_app(tiny_model_dir, tmp_path_factory):
    from app import build_app

    state = AppState.start(app_settings(tiny_model_dir, tmp_path_factory.mktemp("sge-cache")), warm_umap=False)
    demo = build_app(state)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size="20mb",
                quiet=True)
    yield state, f"http://127.0.0.1:{port}/"
    demo.close()


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
    assert "not an image Pillow can read" in out[-1]
    assert "prompt is empty" in client.predict("", None, None, 12, 0, api_name="/generate_plain")[1]
    status, info, _, _ = client.predict("/no/such/model", api_name="/load_model")
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
