"""ISO 4217 currencies and their exponents (digits after the decimal point).

Amounts are integers in minor units: 1999 is 19.99 USD, 1999 is 1999 JPY (no minor unit),
1999 is 1.999 KWD. A currency missing here is refused rather than guessed.
"""

from __future__ import annotations

# Everything not listed under another exponent has 2 decimals.
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW "
    "KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN "
    "NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS "
    "VES VED WST XCD YER ZAR ZMW ZWG"
)

EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_TWO.split(), 2),
    **dict.fromkeys(_ZERO.split(), 0),
    **dict.fromkeys(_THREE.split(), 3),
    **dict.fromkeys(_FOUR.split(), 4),
}

# A billion major units at most (10**13 minor units for a 4-decimal currency): far above any
# real payment, far below the 64-bit columns, so no sum of refunds can overflow.
MAX_MAJOR_UNITS = 1_000_000_000


# Above any currency's own bound: for amounts whose currency is known later (refunds).
LARGEST_AMOUNT = int(MAX_MAJOR_UNITS * 10 ** max(EXPONENTS.values()))


class UnknownCurrency(ValueError):
    pass


def normalize(code: str) -> str:
    """The upper-case ISO code; UnknownCurrency if it is not one."""
    upper = code.strip().upper()
    if upper not in EXPONENTS:
        raise UnknownCurrency(f"unknown ISO 4217 currency {code!r} (e.g. USD, EUR, JPY)")
    return upper


def exponent(code: str) -> int:
    return EXPONENTS[normalize(code)]


def max_amount(code: str) -> int:
    """The largest amount accepted, in minor units."""
    return int(MAX_MAJOR_UNITS * 10 ** exponent(code))


def example(code: str) -> str:
    """How 19.99 of the currency (or 1999 of a currency without decimals) is written."""
    digits = exponent(code)
    if digits == 0:
        return f"1999 {code} is 1999"
    major = "19." + "9" * digits
    return f"{code} has {digits} decimals, so {major} {code} is {'1999' + '9' * (digits - 2)}"


def format_amount(amount: int, code: str) -> str:
    digits = exponent(code)
    if digits == 0:
        return f"{amount} {code}"
    sign = "-" if amount < 0 else ""
    whole, part = divmod(abs(amount), 10**digits)
    return f"{sign}{whole}.{part:0{digits}d} {code}"
