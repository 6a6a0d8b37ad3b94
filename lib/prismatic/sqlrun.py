"""`prism sql`: read-only Spark SQL over the tables, addressed by their short names.

Why a parser and not a keyword check: Spark SQL can write (``INSERT OVERWRITE DIRECTORY`` deletes a Delta table's
folder, ``CREATE TABLE ... LOCATION ... AS SELECT`` copies the pool anywhere), read any file
(``text.`/etc/hostname` ``) and call Java (``java_method('java.lang.System', 'getenv', ...)``), and all of that can
hide in a CTE, a subquery, a named window or an ``EXPLAIN``. So each statement is parsed by the session's own
parser (``sessionState.sqlParser.parsePlan``) and the whole unresolved plan is walked through the JVM objects:
plan nodes, expressions and everything they hold (CTE definitions, window definitions, subquery plans). A
statement runs only if

* its root is a query, or one of the read-only commands SHOW ..., DESCRIBE ..., EXPLAIN <query>;
* every other plan node is a query operator from :data:`QUERY_NODES` (an allow-list: a node this module does not
  know, such as a write command added by a later Spark, is refused until someone lists it);
* every relation is a table or view by its one-part short name (no ``format.`path` ``, no
  ``catalog.schema.table``, no ``WITH (options)``, no streaming read);
* no function calls Java or loads files or classes (:data:`BLOCKED_FUNCTIONS`, checked by name and by the class
  that implements it, so an alias cannot slip through), table functions come from :data:`TABLE_FUNCTIONS`, and no
  name is computed at run time (``IDENTIFIER(expr)`` used as a function).

Nothing runs until every statement of the text has passed: a refused statement changes nothing. The same check
guards ``--where`` filters (:func:`check_filter`). Writes happen only through the stages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pyspark.errors import PySparkException

from prismatic.errors import PrismError, SqlRefusedError, first_line
from prismatic.tables import TableStore

QUERY_NODES = frozenset(
    {
        "Aggregate",
        "CTERelationRef",
        "CurrentNamespace",
        "Deduplicate",
        "Distinct",
        "Except",
        "Expand",
        "Filter",
        "Generate",
        "GlobalLimit",
        "Intersect",
        "Join",
        "LateralJoin",
        "LimitAll",
        "LocalLimit",
        "LocalRelation",
        "Offset",
        "OneRowRelation",
        "PipeOperator",
        "Pivot",
        "Project",
        "Range",
        "RebalancePartitions",
        "RelationTimeTravel",
        "Repartition",
        "RepartitionByExpression",
        "Sample",
        "Sort",
        "SubqueryAlias",
        "Tail",
        "Union",
        "UnionLoop",
        "UnionLoopRef",
        "Unpivot",
        "UnresolvedFunctionName",
        "UnresolvedHaving",
        "UnresolvedHint",
        "UnresolvedInlineTable",
        "UnresolvedNamespace",
        "UnresolvedRelation",
        "UnresolvedSubqueryColumnAliases",
        "UnresolvedTVFAliases",
        "UnresolvedTable",
        "UnresolvedTableOrView",
        "UnresolvedTableValuedFunction",
        "UnresolvedView",
        "UnresolvedWith",
        "Window",
        "WithCTE",
        "WithWindowDefinition",
    }
)
"""Plan nodes the parser produces for queries (and the name holders of SHOW / DESCRIBE)."""

READ_COMMANDS = frozenset(
    {
        "DescribeColumn",
        "DescribeFunction",
        "DescribeNamespace",
        "DescribeQueryCommand",
        "DescribeRelation",
        "ExplainCommand",
        "ShowCatalogsCommand",
        "ShowColumns",
        "ShowCreateTable",
        "ShowCurrentNamespaceCommand",
        "ShowFunctions",
        "ShowNamespaces",
        "ShowNamespacesCommand",
        "ShowPartitions",
        "ShowTableProperties",
        "ShowTables",
        "ShowTablesExtended",
        "ShowViews",
    }
)
"""Commands that only read the catalog; allowed at the root of a statement (EXPLAIN's plan must be a query)."""

BLOCKED_FUNCTIONS = frozenset(
    {
        "reflect",
        "java_method",
        "try_reflect",  # call any static Java method: System.getenv, System.exit, ...
        "from_protobuf",
        "to_protobuf",  # load a Java class by name or a descriptor file from a path
        "from_avro",
        "to_avro",
        "schema_of_avro",  # avroSchemaUrl reads a file
        "secret",
        "try_secret",
        "http_request",  # Databricks: secrets and the network
    }
)
BLOCKED_FUNCTION_CLASSES = frozenset(
    {
        "CallMethodViaReflection",
        "TryReflect",
        "FromProtobuf",
        "ToProtobuf",
        "FromAvro",
        "ToAvro",
        "SchemaOfAvro",
    }
)
"""Implementing classes of the blocked functions: any other name registered for one of them is blocked too."""

TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "explode",
        "explode_outer",
        "inline",
        "inline_outer",
        "posexplode",
        "posexplode_outer",
        "stack",
        "json_tuple",
        "variant_explode",
        "variant_explode_outer",
        "sql_keywords",
        "collations",
    }
)
"""Table-valued functions a query may call (not ``python_worker_logs``, nor Databricks' ``read_files`` & co)."""

STATEMENT_WORDS = {
    "InsertIntoDir": "INSERT OVERWRITE DIRECTORY writes files",
    "InsertIntoStatement": "INSERT writes a table",
    "CreateTableAsSelect": "CREATE TABLE ... AS SELECT writes a table",
    "ReplaceTableAsSelect": "CREATE OR REPLACE TABLE ... AS SELECT writes a table",
    "CreateTable": "CREATE TABLE changes the catalog",
    "CreateViewCommand": "CREATE VIEW changes the catalog",
    "CreateView": "CREATE VIEW changes the catalog",
    "DropTable": "DROP TABLE deletes a table",
    "DeleteFromTable": "DELETE changes a table",
    "UpdateTable": "UPDATE changes a table",
    "MergeIntoTable": "MERGE changes a table",
    "TruncateTable": "TRUNCATE deletes rows",
    "SetCommand": "SET changes the session's Spark settings",
    "ResetCommand": "RESET changes the session's Spark settings",
    "CacheTable": "CACHE TABLE changes the session",
    "AddJarsCommand": "ADD JAR loads code",
    "AddFilesCommand": "ADD FILE reads files",
    "ScriptTransformation": "TRANSFORM ... USING runs a program",
    "UnresolvedExecuteImmediate": "EXECUTE IMMEDIATE runs SQL text that cannot be checked",
    "PlanWithUnresolvedIdentifier": "IDENTIFIER(...) computes a table name at run time",
}
LEAF_PACKAGES = ("org.apache.spark.sql.types.", "org.apache.spark.unsafe.", "java.")  # hold no plan or call
MAX_OBJECTS = 200_000  # JVM objects walked per statement before giving up (a statement of many pages)


def split_statements(text: str) -> list[str]:
    """Split on ``;`` outside quotes and comments; drop empty statements and ``--`` comment lines."""
    stmts, buf, quote, i = [], [], "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
        elif ch in ("'", '"', "`"):
            quote = ch
            buf.append(ch)
        elif ch == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = len(text) if j < 0 else j
            continue
        elif ch == ";":
            stmts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    stmts.append("".join(buf))
    return [s.strip() for s in stmts if s.strip()]


def _simple_name(jclass_name: str) -> str:
    """``org.apache...CurrentNamespace$`` -> ``CurrentNamespace``; ``a.B$C`` -> ``C``."""
    return jclass_name.rsplit(".", 1)[-1].rstrip("$").rsplit("$", 1)[-1]


def _seq(jseq) -> list:
    """A Scala Seq (of strings, say) as a Python list."""
    it, out = jseq.iterator(), []
    while it.hasNext():
        out.append(it.next())
    return out


@dataclass
class _Walk:
    """What one walk of a parsed plan found."""

    plans: list[tuple[str, object]] = field(default_factory=list)  # (simple class name, JVM object)
    exprs: list[tuple[str, object]] = field(default_factory=list)
    objects: int = 0


class ReadOnlyGuard:
    """Checks statements and filter expressions against the read-only rules, with the session's own parser.

    Args:
        spark: the SparkSession whose parser and function registry are used (one guard per session).
    """

    def __init__(self, spark):
        self.spark = spark
        jvm = spark._jvm
        self._parser = spark._jsparkSession.sessionState().sqlParser()
        cls = jvm.java.lang.Class.forName
        self._plan_cls = cls("org.apache.spark.sql.catalyst.plans.logical.LogicalPlan")
        self._expr_cls = cls("org.apache.spark.sql.catalyst.expressions.Expression")
        self._product_cls = cls("scala.Product")
        self._iterable_cls = cls("scala.collection.Iterable")
        self._option_cls = cls("scala.Option")
        self._blocked: frozenset[str] | None = None
        self._kinds: dict[str, str] = {}  # JVM class name -> plan / expr / option / iterable / product / other

    # ---- public checks

    def check_statement(self, stmt: str) -> None:
        """Raise :class:`SqlRefusedError` (or PrismError for a syntax error) unless ``stmt`` only reads tables."""
        plan = self._parse(lambda: self._parser.parsePlan(stmt), "SQL failed: ")
        walk = self._walk(plan, stmt)
        root = walk.plans[0][0] if walk.plans else ""
        if root not in READ_COMMANDS and root not in QUERY_NODES:
            self._refuse_statement(root, stmt)
        for name, _ in walk.plans[1:]:
            if name not in QUERY_NODES:
                self._refuse_statement(name, stmt, inside=True)
        self._check_nodes(walk, stmt)

    def check_filter(self, expr: str, label: str = "--where") -> None:
        """Raise unless the filter expression ``expr`` (a ``--where``) only reads tables; subqueries are checked."""
        tree = self._parse(lambda: self._parser.parseExpression(expr), f"{label} {expr!r} is not a valid filter: ")
        walk = self._walk(tree, expr)
        for name, _ in walk.plans:
            if name not in QUERY_NODES:
                self._refuse_statement(name, expr, inside=True)
        self._check_nodes(walk, expr)

    # ---- parsing and walking

    def _parse(self, call, prefix: str):
        from py4j.protocol import Py4JJavaError
        from pyspark.errors.exceptions.captured import convert_exception

        try:
            return call()
        except (Py4JJavaError, PySparkException) as e:
            err = convert_exception(e.java_exception) if isinstance(e, Py4JJavaError) else e
            raise PrismError(f"{prefix}{first_line(err)}", hint="check the syntax (Spark SQL)") from None

    def _walk(self, root, text: str) -> _Walk:
        """Every plan node and expression reachable from ``root``, depth first (the root first)."""
        from py4j.java_gateway import JavaObject

        found, stack = _Walk(), [root]
        while stack:
            obj = stack.pop()
            found.objects += 1
            if found.objects > MAX_OBJECTS:
                raise SqlRefusedError(f"{_head(text)} refused: too large to check")
            cls_name = obj.getClass().getName()
            kind = self._kinds.get(cls_name) or self._kind(obj, cls_name)
            if kind in ("plan", "expr"):
                (found.plans if kind == "plan" else found.exprs).append((_simple_name(cls_name), obj))
            if kind == "option":
                children = [obj.get()] if obj.isDefined() else []
            elif kind == "iterable":
                children = _seq(obj)
            elif kind in ("plan", "expr", "product"):
                children = [obj.productElement(i) for i in range(obj.productArity())]
            else:
                continue
            stack.extend(reversed([c for c in children if isinstance(c, JavaObject)]))
        return found

    def _kind(self, obj, cls_name: str) -> str:
        """How to walk objects of this JVM class (asked of the JVM once per class; data types are leaves)."""
        if cls_name.startswith(LEAF_PACKAGES):
            self._kinds[cls_name] = "other"
            return "other"
        checks = (
            ("option", self._option_cls),
            ("iterable", self._iterable_cls),
            ("plan", self._plan_cls),
            ("expr", self._expr_cls),
            ("product", self._product_cls),
        )
        kind = next((k for k, c in checks if c.isInstance(obj)), "other")
        self._kinds[cls_name] = kind
        return kind

    # ---- rules

    def _check_nodes(self, walk: _Walk, text: str) -> None:
        for name, node in walk.plans:
            if name in ("UnresolvedRelation", "UnresolvedTable", "UnresolvedTableOrView", "UnresolvedView"):
                self._check_relation(name, node, text)
            elif name == "UnresolvedTableValuedFunction":
                fn = ".".join(_seq(node.name())).lower()
                if fn not in TABLE_FUNCTIONS:
                    raise SqlRefusedError(
                        f"table function {fn}() refused in {_head(text)}",
                        hint=f"table functions allowed: {', '.join(sorted(TABLE_FUNCTIONS))}",
                    )
        for name, expr in walk.exprs:
            if name == "UnresolvedFunction":
                self._check_function(_seq(expr.nameParts()), text)
            elif name == "UnresolvedGenerator":
                self._check_function([expr.name().funcName()], text)
            elif "UnresolvedIdentifier" in name:
                raise SqlRefusedError(
                    f"IDENTIFIER(...) as a function name refused in {_head(text)}", hint="name the function directly"
                )

    def _check_relation(self, kind: str, node, text: str) -> None:
        parts = [str(p) for p in _seq(node.multipartIdentifier())]
        shown = ".".join(f"`{p}`" if not p.replace("_", "").isalnum() else p for p in parts)
        if len(parts) != 1:
            raise SqlRefusedError(
                f"{shown} refused: only the tables of this data root, by their short names, can be read",
                hint="address a table by its short name (samples, pool, quarantine, ...): no file paths "
                "(format.`path`) and no catalog.schema.table names",
            )
        if kind == "UnresolvedRelation" and (not node.options().isEmpty() or node.isStreaming()):
            raise SqlRefusedError(
                f"read options or a streaming read of {shown} refused",
                hint="read the table by its short name, without WITH (...) options or STREAM",
            )

    def _check_function(self, name_parts: list, text: str) -> None:
        name = str(name_parts[-1]).lower() if name_parts else ""
        if name in BLOCKED_FUNCTIONS or name in self._blocked_names():
            raise SqlRefusedError(
                f"{name}() refused: it calls Java methods or reads files or secrets",
                hint="SQL here may not call reflect, java_method, try_reflect, the protobuf / avro functions or"
                " secret(); query the tables only",
            )

    def _blocked_names(self) -> frozenset[str]:
        """Every registered function name whose implementing class is blocked (aliases included), once."""
        if self._blocked is None:
            reg = self.spark._jsparkSession.sessionState().functionRegistry()
            names = set()
            for fid in _seq(reg.listFunction()):
                info = reg.lookupFunction(fid)
                if info.isDefined() and _simple_name(info.get().getClassName()) in BLOCKED_FUNCTION_CLASSES:
                    names.add(fid.funcName().lower())
            self._blocked = frozenset(names)
        return self._blocked

    def _refuse_statement(self, node: str, text: str, inside: bool = False) -> None:
        what = STATEMENT_WORDS.get(node, f"{node or 'this statement'} is not a query")
        where = " (inside the statement)" if inside else ""
        raise SqlRefusedError(f"prism sql is read-only: {_head(text)} refused, {what}{where}")


def _head(text: str, n: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= n else flat[: n - 1] + "…")


def check_filter(spark, expr: str, label: str = "--where") -> None:
    """Refuse a ``--where`` filter that does not parse, calls Java or reads outside the tables.

    Raises:
        SqlRefusedError: the filter breaks a read-only rule (see :class:`ReadOnlyGuard`).
        PrismError: the filter does not parse (one line, Spark's reason).
    """
    ReadOnlyGuard(spark).check_filter(expr, label)


def run_sql(store: TableStore, text: str, limit: int = 1000) -> Iterator[tuple[str, list[dict]]]:
    """Check every statement of ``text`` (nothing runs if one is refused), then run each over the table views.

    Yields:
        (the statement on one line, rows as dicts) per statement.

    Raises:
        SqlRefusedError: a statement that is not a read-only query (see the module docstring).
        PrismError: a syntax or analysis error, as one line.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise PrismError(f"--limit {limit!r} must be a whole number >= 1 (rows printed per statement)")
    views = store.register_views()
    spark = store.spark
    guard = ReadOnlyGuard(spark)
    stmts = split_statements(text)
    if not stmts:
        raise PrismError("no SQL statement given", hint='prism sql "SELECT count(*) FROM samples"')
    for stmt in stmts:
        guard.check_statement(stmt)
    return _execute(spark, stmts, views, limit)


def _execute(spark, stmts: list[str], views: list[str], limit: int) -> Iterator[tuple[str, list[dict]]]:
    for stmt in stmts:
        try:
            df = spark.sql(stmt)
            rows = [r.asDict(recursive=True) for r in df.limit(limit).collect()] if df.columns else []
        except PySparkException as e:
            raise PrismError(
                f"SQL failed: {first_line(e)}", hint=f"tables here: {', '.join(views) or 'none yet'}"
            ) from None
        yield " ".join(stmt.split()), rows
