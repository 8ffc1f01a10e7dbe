"""pipeline.htmldoc: a report's Markdown as one HTML page that needs nothing from outside, checked in Chromium."""

import cv2
import numpy as np
import pytest

from pipeline.htmldoc import CSP, markdown_html
from tests.helpers import CHROMIUM, NO_CHROMIUM, chromium_images

PAGE = """# Report

| metric | test |
|---|---|
| roc_auc | 0.910 |

![figure](figure.png)
![cam](gradcam/cam.png)
"""


@pytest.fixture
def folder(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (0, 128, 255)
    (tmp_path / "gradcam").mkdir()
    cv2.imwrite(str(tmp_path / "figure.png"), pixels)
    cv2.imwrite(str(tmp_path / "gradcam" / "cam.png"), pixels[::-1])
    return tmp_path


def test_images_under_the_folder_are_embedded(folder):
    page = markdown_html(PAGE, folder, "Report")
    assert page.count('<img src="data:image/png;base64,') == 2
    assert "figure.png" not in page.replace('alt="figure"', "")


def test_the_page_allows_no_network_source(folder):
    page = markdown_html(PAGE, folder, "Report")
    assert f'content="{CSP}"' in page
    assert "default-src 'none'" in CSP


def test_tables_render_and_raw_html_in_the_text_is_escaped(folder):
    page = markdown_html(PAGE + "\nclass <script>alert(1)</script>\n", folder, "Report")
    assert "<td>0.910</td>" in page
    assert "<script>" not in page


def test_a_link_outside_the_folder_is_not_read(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    cv2.imwrite(str(outside), np.zeros((8, 8), np.uint8))
    page = markdown_html(f"![x](../{outside.parent.name}/secret.png)", folder, "Report")
    assert "data:image" not in page


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_every_image_loads_in_chromium_and_a_remote_one_is_refused(folder):
    page = folder / "report.html"
    page.write_text(markdown_html(PAGE, folder, "Report"))
    assert chromium_images(page) == (2, 0)
    page.write_text(markdown_html(PAGE + "\n![remote](http://127.0.0.1:9/x.png)\n", folder, "Report"))
    assert chromium_images(page) == (3, 1)  # the policy blocks it: offline means offline
