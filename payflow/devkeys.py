"""Development key sets (DESIGN §6.5): `run.py keys DIR` writes one; simulators and `--dev` load it.

Never for production: real merchant keys come from WeChat Pay's merchant platform.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import string

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from payflow.wechat import crypto

DEFAULT_PAYFLOW_PORT = 8080
DEFAULT_WECHAT_SIM_PORT = 8081
DEFAULT_BACKEND_SIM_PORT = 8082
BACKEND_SIM_PATH = "/v1/events"

FILES = ("apiclient_key.pem", "apiclient_pub.pem", "wechatpay_key.pem", "pub_key.pem", "keys.json", "payflow.env")


@dataclasses.dataclass(frozen=True)
class KeySet:
    """Everything a key directory holds, loaded."""

    directory: pathlib.Path
    mchid: str
    appid: str
    mch_serial: str
    pub_key_id: str
    apiv3_key: str = dataclasses.field(repr=False)
    backend_secret: str = dataclasses.field(repr=False)
    merchant_private_key: RSAPrivateKey = dataclasses.field(repr=False)
    merchant_public_key: RSAPublicKey = dataclasses.field(repr=False)
    platform_private_key: RSAPrivateKey = dataclasses.field(repr=False)
    platform_public_key: RSAPublicKey = dataclasses.field(repr=False)
    api_token: str | None = dataclasses.field(default=None, repr=False)
    admin_token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def merchant_key_file(self) -> pathlib.Path:
        return self.directory / "apiclient_key.pem"

    @property
    def pub_key_file(self) -> pathlib.Path:
        return self.directory / "pub_key.pem"


class KeySetError(Exception):
    """A key directory is missing a file or holds something unreadable; the message names it."""


def env_lines(keys: KeySet, *, payflow_url: str, wechat_url: str, backend_url: str) -> dict[str, str]:
    """The PAYFLOW_* variables that wire payflow to this key set and the given endpoints."""
    env = {
        "PAYFLOW_WECHAT_BASE_URL": wechat_url,
        "PAYFLOW_WECHAT_MCHID": keys.mchid,
        "PAYFLOW_WECHAT_APPID": keys.appid,
        "PAYFLOW_WECHAT_MCH_SERIAL": keys.mch_serial,
        "PAYFLOW_WECHAT_MCH_KEY_FILE": str(keys.merchant_key_file),
        "PAYFLOW_WECHAT_APIV3_KEY": keys.apiv3_key,
        "PAYFLOW_WECHAT_PUBKEY_ID": keys.pub_key_id,
        "PAYFLOW_WECHAT_PUBKEY_FILE": str(keys.pub_key_file),
        "PAYFLOW_NOTIFY_URL": f"{payflow_url}/v1/wechat/notify",
        "PAYFLOW_BACKEND_URL": backend_url,
        "PAYFLOW_BACKEND_SECRET": keys.backend_secret,
    }
    if keys.api_token:
        env["PAYFLOW_API_TOKEN"] = keys.api_token
    if keys.admin_token:
        env["PAYFLOW_ADMIN_TOKEN"] = keys.admin_token
    return env


def write_keyset(directory: os.PathLike[str] | str) -> KeySet:
    """Write a complete development key set into `directory` (created if needed; existing files kept out)."""
    path = pathlib.Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    taken = [name for name in FILES if (path / name).exists()]
    if taken:
        raise KeySetError(f"{path} already holds {', '.join(taken)}; refusing to overwrite keys")
    merchant_private, merchant_public = crypto.generate_key_pair()
    platform_private, platform_public = crypto.generate_key_pair()
    alphabet = string.ascii_letters + string.digits
    meta = {
        "mchid": f"19{secrets.randbelow(10**8):08d}",
        "appid": f"wx{secrets.token_hex(8)}",
        "mch_serial": secrets.token_hex(20).upper(),
        "pub_key_id": f"PUB_KEY_ID_{secrets.randbelow(10**20):020d}",
        "apiv3_key": "".join(secrets.choice(alphabet) for _ in range(32)),
        "backend_secret": secrets.token_urlsafe(32),
        "api_token": secrets.token_urlsafe(24),
        "admin_token": secrets.token_urlsafe(24),
    }
    _write_private(path / "apiclient_key.pem", merchant_private)
    (path / "apiclient_pub.pem").write_bytes(merchant_public)
    _write_private(path / "wechatpay_key.pem", platform_private)
    (path / "pub_key.pem").write_bytes(platform_public)
    _write_private(path / "keys.json", (json.dumps(meta, indent=2) + "\n").encode())
    keys = load_keyset(path)
    env = env_lines(
        keys,
        payflow_url=f"http://127.0.0.1:{DEFAULT_PAYFLOW_PORT}",
        wechat_url=f"http://127.0.0.1:{DEFAULT_WECHAT_SIM_PORT}",
        backend_url=f"http://127.0.0.1:{DEFAULT_BACKEND_SIM_PORT}{BACKEND_SIM_PATH}",
    )
    _write_private(path / "payflow.env", "".join(f"{k}={v}\n" for k, v in env.items()).encode())
    return keys


def load_keyset(directory: os.PathLike[str] | str) -> KeySet:
    path = pathlib.Path(directory).resolve()
    try:
        meta = json.loads((path / "keys.json").read_text())
        values = {name: str(meta[name]) for name in
                  ("mchid", "appid", "mch_serial", "pub_key_id", "apiv3_key", "backend_secret")}
        return KeySet(
            directory=path,
            **values,
            merchant_private_key=crypto.load_private_key(path / "apiclient_key.pem"),
            merchant_public_key=crypto.load_public_key(path / "apiclient_pub.pem"),
            platform_private_key=crypto.load_private_key(path / "wechatpay_key.pem"),
            platform_public_key=crypto.load_public_key(path / "pub_key.pem"),
            api_token=meta.get("api_token"),
            admin_token=meta.get("admin_token"),
        )
    except FileNotFoundError as exc:
        raise KeySetError(f"{path} is not a key directory: {exc.filename} is missing "
                          f"(create one with `python run.py keys {path}`)") from None
    except (KeyError, ValueError, crypto.CryptoError) as exc:
        raise KeySetError(f"{path} holds an unreadable key set: {exc}") from None


def _write_private(path: pathlib.Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
