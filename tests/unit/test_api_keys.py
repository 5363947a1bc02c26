"""API keys: generation, hashing, authentication, bootstrap and revocation (SQLite)."""

from __future__ import annotations

import hashlib
import string

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from conveyor.core import api_keys
from conveyor.core.models import ApiKey


def test_generated_keys_are_long_unique_and_well_formed() -> None:
    keys = [api_keys.generate_plaintext() for _ in range(1000)]
    assert len(set(keys)) == 1000
    prefixes = {api_keys.split_key(key) for key in keys}
    assert None not in prefixes
    assert len(prefixes) == 1000
    for key in keys:
        assert len(key) >= 40
        tag, prefix, secret = key.split("_", 2)
        assert tag == "cvk"
        assert len(prefix) == 12
        assert set(prefix) <= set(string.hexdigits.lower())
        # token_urlsafe(32): 256 bits, 43 characters.
        assert len(secret) >= 43


def test_generated_secrets_use_a_wide_alphabet() -> None:
    secrets_part = "".join(api_keys.generate_plaintext().split("_", 2)[2] for _ in range(200))
    assert len(set(secrets_part)) >= 60


@pytest.mark.parametrize(
    "key",
    [
        "",
        "cvk",
        "cvk_",
        "cvk_0123456789ab",
        "cvk_0123456789a_secret",
        "cvk_0123456789abc_secret",
        "xyz_0123456789ab_secret",
        "CVK_0123456789ab_secret",
        "Bearer cvk_0123456789ab_secret",
        "0123456789ab",
    ],
)
def test_split_key_rejects_malformed_keys(key: str) -> None:
    assert api_keys.split_key(key) is None


def test_split_key_keeps_underscores_in_the_secret() -> None:
    assert api_keys.split_key("cvk_0123456789ab_se_cr_et_with_enough_length") == "0123456789ab"


def test_split_key_rejects_an_empty_secret() -> None:
    assert api_keys.split_key("cvk_0123456789ab_") is None


def test_create_key_stores_only_a_sha256_hash(session: Session, engine: Engine) -> None:
    new = api_keys.create_key(session, "reports-service")
    session.commit()
    with Session(engine) as fresh:
        record = fresh.get(ApiKey, new.record.id)
        assert record is not None
        assert record.key_hash == hashlib.sha256(new.plaintext.encode()).hexdigest()
        assert record.key_hash != new.plaintext
        secret = new.plaintext.split("_", 2)[2]
        stored = [str(value) for value in vars(record).values()]
        assert not any(secret in value for value in stored)
        assert record.prefix == api_keys.split_key(new.plaintext)
        assert record.owner.startswith("own_")  # an identity of its own, not the name
        assert record.name == "reports-service"
        assert record.is_admin is False
        assert record.revoked_at is None


def test_create_key_with_an_owner_and_admin_flag(session: Session) -> None:
    new = api_keys.create_key(session, "ci", owner="team-a", admin=True)
    assert (new.record.name, new.record.owner, new.record.is_admin) == ("ci", "team-a", True)


@pytest.mark.parametrize("plaintext", ["hunter2", "cvk_short_secret", "abc_0123456789ab_x"])
def test_create_key_refuses_a_malformed_plaintext(session: Session, plaintext: str) -> None:
    with pytest.raises(ValueError, match="cvk_"):
        api_keys.create_key(session, "x", plaintext=plaintext)
    assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


def test_authenticate_accepts_only_the_exact_key(session: Session) -> None:
    alice = api_keys.create_key(session, "alice")
    bob = api_keys.create_key(session, "bob")
    session.commit()

    found = api_keys.authenticate(session, alice.plaintext)
    assert found is not None
    assert found.id == alice.record.id
    assert api_keys.authenticate(session, bob.plaintext).id == bob.record.id  # type: ignore[union-attr]

    tag, prefix, secret = alice.plaintext.split("_", 2)
    wrong_secret = f"{tag}_{prefix}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert api_keys.authenticate(session, wrong_secret) is None
    assert api_keys.authenticate(session, f"{tag}_{prefix}_") is None
    assert api_keys.authenticate(session, f"{tag}_{prefix}_{secret}x") is None
    # Bob's secret behind Alice's prefix is not Alice.
    bob_secret = bob.plaintext.split("_", 2)[2]
    assert api_keys.authenticate(session, f"{tag}_{prefix}_{bob_secret}") is None


@pytest.mark.parametrize(
    "garbage", ["", "garbage", "cvk_ffffffffffff_unknownprefix", "Bearer x", "cvk__"]
)
def test_authenticate_rejects_garbage_and_unknown_prefixes(session: Session, garbage: str) -> None:
    api_keys.create_key(session, "someone")
    assert api_keys.authenticate(session, garbage) is None


def test_revoked_keys_no_longer_authenticate(session: Session) -> None:
    by_id = api_keys.create_key(session, "by-id")
    by_prefix = api_keys.create_key(session, "by-prefix")
    untouched = api_keys.create_key(session, "untouched")
    session.commit()

    revoked = api_keys.revoke(session, by_id.record.id)
    assert revoked is not None
    assert revoked.id == by_id.record.id
    revoked = api_keys.revoke(session, by_prefix.record.prefix)
    assert revoked is not None
    assert revoked.id == by_prefix.record.id
    session.commit()

    assert api_keys.authenticate(session, by_id.plaintext) is None
    assert api_keys.authenticate(session, by_prefix.plaintext) is None
    assert api_keys.authenticate(session, untouched.plaintext) is not None


def test_revoke_is_idempotent_and_unknown_keys_return_none(session: Session) -> None:
    new = api_keys.create_key(session, "k")
    first = api_keys.revoke(session, new.record.id)
    assert first is not None
    stamp = first.revoked_at
    assert stamp is not None
    again = api_keys.revoke(session, new.record.prefix)
    assert again is not None
    assert again.revoked_at == stamp
    assert api_keys.revoke(session, "no-such-key") is None


def test_ensure_key_is_idempotent(session: Session) -> None:
    plaintext = api_keys.generate_plaintext()
    assert api_keys.ensure_key(session, plaintext) is True
    session.commit()
    assert api_keys.ensure_key(session, plaintext) is False
    assert api_keys.ensure_key(session, plaintext) is False
    session.commit()

    rows = session.scalars(select(ApiKey)).all()
    assert len(rows) == 1
    assert rows[0].is_admin is True
    assert rows[0].owner == "admin"
    assert rows[0].name == "bootstrap"
    record = api_keys.authenticate(session, plaintext)
    assert record is not None
    assert record.id == rows[0].id


def test_ensure_key_refuses_a_different_key_with_the_same_prefix(session: Session) -> None:
    plaintext = api_keys.generate_plaintext()
    api_keys.ensure_key(session, plaintext)
    tag, prefix, _ = plaintext.split("_", 2)
    with pytest.raises(ValueError, match="same prefix"):
        api_keys.ensure_key(session, f"{tag}_{prefix}_a-different-secret-entirely")
    assert session.scalar(select(func.count()).select_from(ApiKey)) == 1


def test_ensure_key_refuses_a_malformed_key(session: Session) -> None:
    with pytest.raises(ValueError, match="cvk_"):
        api_keys.ensure_key(session, "not-a-conveyor-key")


def test_list_keys_returns_every_key_oldest_first(session: Session) -> None:
    names = [f"key-{i}" for i in range(5)]
    for name in names:
        api_keys.create_key(session, name)
    assert [key.name for key in api_keys.list_keys(session)] == names


# --- owners: identities, never shared implicitly, never across the admin line ------------


def test_a_new_key_gets_a_new_owner_whatever_its_name(session: Session) -> None:
    api_keys.ensure_key(session, api_keys.generate_plaintext())  # the bootstrap admin
    first = api_keys.create_key(session, "admin")
    second = api_keys.create_key(session, "admin")
    owners = {first.record.owner, second.record.owner}
    assert len(owners) == 2
    assert api_keys.BOOTSTRAP_OWNER not in owners
    assert all(owner.startswith("own_") for owner in owners)
    assert (first.record.name, first.existing_owner) == ("admin", False)
    admin = api_keys.create_key(session, "admin", admin=True)
    assert admin.record.owner not in {*owners, api_keys.BOOTSTRAP_OWNER}


def test_joining_an_existing_owner_is_explicit(session: Session) -> None:
    first = api_keys.create_key(session, "web")
    again = api_keys.create_key(session, "web-2", owner=first.record.owner)
    assert (again.record.owner, again.existing_owner) == (first.record.owner, True)
    named = api_keys.create_key(session, "billing", owner="  acme ")
    assert (named.record.owner, named.existing_owner) == ("acme", False)  # a new owner
    assert api_keys.create_key(session, "billing-2", owner="acme").existing_owner is True


def test_a_non_admin_key_never_shares_an_admins_owner(session: Session) -> None:
    api_keys.ensure_key(session, api_keys.generate_plaintext())
    ops = api_keys.create_key(session, "ops", admin=True)
    for owner in (api_keys.BOOTSTRAP_OWNER, ops.record.owner):
        with pytest.raises(api_keys.OwnerConflict, match="has admin keys") as raised:
            api_keys.create_key(session, "intruder", owner=owner)
        assert raised.value.owner == owner
    # Admins may share an owner, explicitly.
    assert api_keys.create_key(session, "ops-2", owner=ops.record.owner, admin=True).existing_owner
    assert session.scalar(select(func.count()).where(ApiKey.name == "intruder")) == 0


def test_an_admin_key_never_joins_a_non_admin_owner(session: Session) -> None:
    tenant = api_keys.create_key(session, "tenant")
    with pytest.raises(api_keys.OwnerConflict, match="has non-admin keys"):
        api_keys.create_key(session, "root", owner=tenant.record.owner, admin=True)


def test_a_revoked_key_still_holds_its_owner_on_its_side_of_the_admin_line(
    session: Session,
) -> None:
    ops = api_keys.create_key(session, "ops", owner="ops", admin=True)
    api_keys.revoke(session, ops.record.id)
    # Its jobs and stored idempotent responses are still the owner's.
    with pytest.raises(api_keys.OwnerConflict):
        api_keys.create_key(session, "ops", owner="ops")


@pytest.mark.parametrize("owner", ["", "   ", "x" * 121])
def test_an_owner_must_be_a_usable_name(session: Session, owner: str) -> None:
    with pytest.raises(ValueError, match="1 to 120 characters"):
        api_keys.create_key(session, "k", owner=owner)


def test_bootstrap_never_joins_a_non_admin_owner_left_by_old_data(session: Session) -> None:
    # Before owners were identities, a key named "admin" took the owner "admin".
    legacy = api_keys.create_key(session, "admin", owner=api_keys.BOOTSTRAP_OWNER)
    plaintext = api_keys.generate_plaintext()
    assert api_keys.ensure_key(session, plaintext) is True
    record = api_keys.authenticate(session, plaintext)
    assert record is not None
    assert record.is_admin is True
    assert record.owner.startswith("own_")
    session.refresh(legacy.record)
    assert legacy.record.owner == api_keys.BOOTSTRAP_OWNER  # existing keys keep their owners


def test_every_bootstrap_key_shares_the_bootstrap_admin_owner(session: Session) -> None:
    first, second = api_keys.generate_plaintext(), api_keys.generate_plaintext()
    api_keys.ensure_key(session, first)
    api_keys.ensure_key(session, second)  # the variable changed: a second admin key
    owners = {key.owner for key in api_keys.list_keys(session)}
    assert owners == {api_keys.BOOTSTRAP_OWNER}
