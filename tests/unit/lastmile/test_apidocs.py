"""The API docs pages load every asset from the service itself, never from a CDN (lastmile.apidocs)."""

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lastmile import apidocs

URL_ATTR = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
PAGES = ("/docs", "/redoc")


def make_app(openapi_url: str | None = "/openapi.json") -> FastAPI:
    app = FastAPI(title="tiny", docs_url=None, redoc_url=None, openapi_url=openapi_url)

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    apidocs.install(app)
    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(make_app())


def page_urls(html: str) -> list[str]:
    return URL_ATTR.findall(html)


@pytest.mark.parametrize("page", PAGES)
def test_page_is_html_with_only_local_urls(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html
    assert "https://" not in html
    assert "cdn" not in html.lower()
    assert "fonts.googleapis" not in html
    assert "/openapi.json" in html
    urls = page_urls(html)
    assert urls, "the page references no asset"
    for url in urls:
        assert url.startswith(apidocs.ASSETS_PATH + "/"), url


@pytest.mark.parametrize("page", PAGES)
def test_every_referenced_asset_is_served(client: TestClient, page: str) -> None:
    urls = page_urls(client.get(page).text)
    kinds = set()
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        content_type = response.headers["content-type"]
        if url.endswith(".js"):
            assert "javascript" in content_type, (url, content_type)
            assert len(response.content) > 100_000, url
        elif url.endswith(".css"):
            assert content_type.startswith("text/css"), (url, content_type)
            assert len(response.content) > 10_000, url
        else:
            assert content_type.startswith("image/"), (url, content_type)
            assert len(response.content) > 100, url
        kinds.add(url.rsplit(".", 1)[-1])
    assert "js" in kinds
    if page == "/docs":
        assert "css" in kinds


def test_pages_not_in_schema_and_openapi_still_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/ping"}


def test_custom_openapi_url_and_root_path() -> None:
    client = TestClient(make_app(openapi_url="/api/schema.json"), root_path="/coverage")
    for page in PAGES:
        html = client.get(page).text
        assert "/coverage/api/schema.json" in html
        for url in page_urls(html):
            assert url.startswith("/coverage" + apidocs.ASSETS_PATH + "/"), url
            # As an ASGI server with --root-path passes it on: the full path, root_path included.
            assert client.get(url).status_code == 200, url


def test_no_openapi_means_no_pages() -> None:
    client = TestClient(make_app(openapi_url=None))
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404


def test_vendored_licences_ship() -> None:
    static = apidocs.STATIC_DIR
    for name in ("swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE", "README.md"):
        assert (static / name).is_file(), name
    assert "Apache License" in (static / "swagger-ui/LICENSE").read_text(encoding="utf-8")
    assert "MIT" in (static / "redoc/LICENSE").read_text(encoding="utf-8")
    readme = (static / "README.md").read_text(encoding="utf-8")
    for fact in ("swagger-ui-dist", "redoc", "Apache-2.0", "MIT", "scripts/vendor_apidocs"):
        assert fact in readme, fact
    assert not list(static.rglob("*.map"))
