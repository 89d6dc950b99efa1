"""Parties: the investors and borrowers who own wallets. Pure validation of Brazilian identity data.

A party is registered once per document (CPF for people, CNPJ for companies) and kind, with its wallet opened in
the same commit. Check digits are verified here, in the domain, not only at the HTTP edge.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Final, Literal
from uuid import UUID

from ledger import errors

PARTY_ID_NAMESPACE: Final = UUID("3c9a1e42-7b5d-5f60-8e21-94d0c7a6b1f3")
PartyKind = Literal["investor", "borrower"]
PARTY_KINDS: Final = ("investor", "borrower")
NAME_LENGTH_MAX: Final = 140
EMAIL_LENGTH_MAX: Final = 254
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN: Final = re.compile(r"\A[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@" + _LABEL + r"(?:\." + _LABEL + r")+\Z")
#: Brazilian numbers in E.164: +55, a two-digit area code, 8 or 9 digits.
PHONE_PATTERN: Final = re.compile(r"\A\+55[1-9][0-9][0-9]{8,9}\Z")


def party_id_for_key(key: str) -> UUID:
    return uuid.uuid5(PARTY_ID_NAMESPACE, key)


def wallet_id_for_party(party_id: UUID) -> UUID:
    """A party's wallet id is derived from the party, so a replayed registration opens nothing new."""
    return uuid.uuid5(PARTY_ID_NAMESPACE, f"wallet:{party_id}")


def _check_digit(digits: str, weights: range | list[int]) -> int:
    total = sum(int(d) * w for d, w in zip(digits, weights, strict=False))
    remainder = total % 11
    return 0 if remainder < 2 else 11 - remainder


def is_valid_cpf(cpf: str) -> bool:
    """11 digits, not all equal, both check digits right."""
    if not re.fullmatch(r"[0-9]{11}", cpf) or cpf == cpf[0] * 11:
        return False
    first = _check_digit(cpf[:9], range(10, 1, -1))
    second = _check_digit(cpf[:10], range(11, 1, -1))
    return cpf[9:] == f"{first}{second}"


def is_valid_cnpj(cnpj: str) -> bool:
    """14 digits, not all equal, both check digits right."""
    if not re.fullmatch(r"[0-9]{14}", cnpj) or cnpj == cnpj[0] * 14:
        return False
    weights = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
    first = _check_digit(cnpj[:12], weights)
    second = _check_digit(cnpj[:13], [6, *weights])
    return cnpj[12:] == f"{first}{second}"


def document_type(document: str) -> Literal["cpf", "cnpj"]:
    """Classifies a digits-only document, raising ``InvalidRequest`` when its check digits are wrong."""
    if len(document) == 11 and is_valid_cpf(document):
        return "cpf"
    if len(document) == 14 and is_valid_cnpj(document):
        return "cnpj"
    raise errors.InvalidRequest("document must be a valid CPF (11 digits) or CNPJ (14 digits)", field="document")


@dataclass(frozen=True, slots=True)
class RegisterParty:
    """Register an investor or borrower and open their wallet. Idempotent by ``key``."""

    key: str
    kind: PartyKind
    name: str
    document: str
    email: str
    phone: str

    @property
    def party_id(self) -> UUID:
        return party_id_for_key(self.key)

    def canonical(self) -> str:
        return "|".join((self.kind, self.name, self.document, self.email.lower(), self.phone))

    def payload_hash(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def validate(self) -> None:
        if self.kind not in PARTY_KINDS:
            raise errors.InvalidRequest("kind must be investor or borrower", field="kind")
        if not isinstance(self.name, str) or not 0 < len(self.name.strip()) <= NAME_LENGTH_MAX or (
            not self.name.isprintable()
        ):
            raise errors.InvalidRequest(f"name must be 1 to {NAME_LENGTH_MAX} printable characters", field="name")
        document_type(self.document)
        if len(self.email) > EMAIL_LENGTH_MAX or not EMAIL_PATTERN.match(self.email):
            raise errors.InvalidRequest("email is not a valid address", field="email")
        if not PHONE_PATTERN.match(self.phone):
            raise errors.InvalidRequest("phone must be a Brazilian number in E.164, like +5511987654321",
                                        field="phone")


@dataclass(slots=True)
class Party:
    id: UUID
    kind: str
    name: str
    document: str
    email: str
    phone: str
    wallet_id: UUID
    payload_hash: str

    def row(self) -> list[object]:
        return [str(self.id), self.kind, self.name, self.document, self.email, self.phone, str(self.wallet_id),
                self.payload_hash]

    @classmethod
    def from_row(cls, row: list[object]) -> Party:
        return cls(UUID(str(row[0])), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]),
                   UUID(str(row[6])), str(row[7]))
