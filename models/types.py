"""Column types that keep money exact and timestamps in UTC on both SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

# NUMERIC(38, 18) on PostgreSQL: exact, and ample for venue quantities, prices and USD amounts.
NUMERIC_SCALE = 18


class DecimalType(TypeDecorator[Decimal]):
    """Decimal stored losslessly: text on SQLite (which has no exact numeric), NUMERIC elsewhere.

    A value with more fractional digits than NUMERIC keeps is refused rather than rounded.
    """

    impl = String(80)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(80))
        return dialect.type_descriptor(Numeric(38, NUMERIC_SCALE, asdecimal=True))

    def process_bind_param(self, value, dialect: Dialect):
        if value is None:
            return None
        if not isinstance(value, Decimal):
            if isinstance(value, float):
                raise TypeError(f"money must be Decimal, not float ({value!r})")
            value = Decimal(value)
        if not value.is_finite():
            raise ValueError(f"money must be finite, got {value}")
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -NUMERIC_SCALE and value != value.quantize(
                Decimal(1).scaleb(-NUMERIC_SCALE)):
            raise ValueError(f"{value} has more than {NUMERIC_SCALE} decimal places")
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect: Dialect):
        if value is None:
            return None
        result = Decimal(value) if not isinstance(value, Decimal) else value
        return result.normalize() if dialect.name != "sqlite" else result


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes; naive values are refused (they are a bug upstream)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect: Dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value, dialect: Dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
