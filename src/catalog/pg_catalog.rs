//! The part of `pg_catalog` that psql's meta-commands (`\d`, `\dt`, `\dm`,
//! `\dv`, `\dn`, `\l`, `\df`, `\d <name>`) and catalog-reading tools
//! query, built per query from eddy's catalog so it is always in step.
//!
//! Tables: `pg_namespace`, `pg_class` (tables `r`, materialized views `m`,
//! primary keys as btree indexes `i` named `<table>_pkey`), `pg_attribute`,
//! `pg_type`, `pg_collation`, `pg_database`, `pg_am`, `pg_index` and
//! `pg_constraint` (the primary keys), `pg_roles` (eddy's roles, for
//! `\du`), `pg_class.relacl` (the grants, for `\dp`), and empty
//! `pg_attrdef`, `pg_description`, `pg_proc`, `pg_policy`, `pg_auth_members`,
//! `pg_statistic_ext`, `pg_publication*`, `pg_inherits`, `pg_trigger`,
//! `pg_rewrite`. Functions: `pg_get_userbyid`, `pg_table_is_visible`,
//! `pg_get_indexdef`, `pg_get_constraintdef`, `pg_get_expr`,
//! `format_type`, `obj_description` and more, each also under its
//! `pg_catalog.` name (DataFusion looks qualified names up as written).
//! OIDs are stable: relation id + 16384 (an index: its table's + 2^24).
//!
//! [`rewrite_regclass`] turns what Postgres clients write and DataFusion
//! does not plan into what it does: `::regclass` casts, `OPERATOR(pg_catalog.~)`,
//! `COLLATE`, `::pg_catalog.text`, correlated catalog subqueries (made
//! decorrelatable without changing their answer), `array(subquery)`; and
//! [`provably_empty`] answers with no rows a catalog query DataFusion
//! cannot plan that reads a catalog table eddy keeps empty.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, ArrayRef, BooleanArray, Int64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use crate::catalog::roles::{Roles, BOOTSTRAP_SUPERUSER};
use crate::catalog::Relation;
use crate::common::pg_types::pg_type;
use crate::error::Result;

const PG_CATALOG_OID: i64 = 11;
const PUBLIC_OID: i64 = 2200;
const OWNER_OID: i64 = 10;
const FIRST_RELATION_OID: i64 = 16384;

/// The namespaces: (oid, name).
const NAMESPACES: [(i64, &str); 4] = [
    (PG_CATALOG_OID, "pg_catalog"),
    (PUBLIC_OID, "public"),
    (13000, "information_schema"),
    (13001, "eddy_catalog"),
];

/// The types eddy's columns can have: (oid, name, length).
const TYPES: [(i64, &str, i64); 14] = [
    (16, "bool", 1),
    (17, "bytea", -1),
    (20, "int8", 8),
    (21, "int2", 2),
    (23, "int4", 4),
    (25, "text", -1),
    (114, "json", -1),
    (700, "float4", 4),
    (701, "float8", 8),
    (1082, "date", 4),
    (1083, "time", 8),
    (1114, "timestamp", 8),
    (1184, "timestamptz", 8),
    (1700, "numeric", -1),
];

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn ints(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

/// The collation of text columns (eddy has one: byte order).
const DEFAULT_COLLATION_OID: i64 = 100;

/// A type's collation: the default one for text, none (0) otherwise.
fn collation_of(type_oid: i64) -> i64 {
    if type_oid == 25 {
        DEFAULT_COLLATION_OID
    } else {
        0
    }
}

/// The btree access method (pg_am), which primary key indexes name.
const BTREE_OID: i64 = 403;
/// Index relations' OIDs are their table's plus this.
const INDEX_OID_OFFSET: i64 = 1 << 24;

/// A relation in pg_class.
struct ClassRow {
    oid: i64,
    name: String,
    kind: &'static str,
    attributes: i64,
    has_index: bool,
    access_method: i64,
}

/// A table's primary key, shown as an index and a constraint.
struct PrimaryKeyIndex {
    table_oid: i64,
    table: String,
    name: String,
    columns: Vec<String>,
    /// Column numbers (from 1).
    positions: Vec<i64>,
}

impl PrimaryKeyIndex {
    fn oid(&self) -> i64 {
        self.table_oid + INDEX_OID_OFFSET
    }

    /// Its constraint's OID.
    fn constraint_oid(&self) -> i64 {
        self.oid() + 1
    }
}

/// The primary keys of the tables among `listed`.
fn primary_keys(listed: &[&Relation]) -> Vec<PrimaryKeyIndex> {
    listed
        .iter()
        .filter_map(|r| match r {
            Relation::Table(table) => {
                let data = table.data.lock().unwrap_or_else(|p| p.into_inner());
                let columns = data.primary_key_columns().to_vec();
                if columns.is_empty() {
                    return None;
                }
                Some(PrimaryKeyIndex {
                    table_oid: FIRST_RELATION_OID + r.id() as i64,
                    table: table.name.clone(),
                    name: format!("{}_pkey", table.name),
                    columns: columns
                        .iter()
                        .map(|&c| table.schema.field(c).name().clone())
                        .collect(),
                    positions: columns.iter().map(|&c| c as i64 + 1).collect(),
                })
            }
            _ => None,
        })
        .collect()
}

/// What `pg_get_indexdef` and `pg_get_constraintdef` say, by OID.
fn definitions(keys: &[PrimaryKeyIndex]) -> BTreeMap<i64, String> {
    let mut definitions = BTreeMap::new();
    for key in keys {
        let columns = key.columns.join(", ");
        definitions.insert(
            key.oid(),
            format!(
                "CREATE UNIQUE INDEX {} ON public.{} USING btree ({columns})",
                key.name, key.table
            ),
        );
        definitions.insert(key.constraint_oid(), format!("PRIMARY KEY ({columns})"));
    }
    definitions
}

fn strings_owned(values: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn falses(n: usize) -> ArrayRef {
    Arc::new(BooleanArray::from(vec![false; n]))
}

/// `text[]`.
fn text_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn table(columns: Vec<(&str, ArrayRef)>) -> Result<Arc<MemTable>> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// The `pg_catalog` of one query: its tables, and what its functions
/// (`pg_get_indexdef`, ...) answer.
pub struct PgCatalog {
    pub schema: Arc<MemorySchemaProvider>,
    /// Index and constraint definitions by OID.
    definitions: Arc<BTreeMap<i64, String>>,
}

/// The OID of role `name`: the bootstrap superuser's is Postgres's 10;
/// others are a stable hash of the name (eddy keeps no role OIDs), above
/// the relation OIDs.
fn role_oid(name: &str) -> i64 {
    if name == BOOTSTRAP_SUPERUSER {
        return OWNER_OID;
    }
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (1 << 30) + (hash % (1 << 30)) as i64
}

/// `relation`'s `aclitem[]` as text (`grantee=privileges/grantor`, the
/// owner first with every privilege), or NULL (the default: only the
/// owner) when nothing is granted on it.
fn access_list(roles: &Roles, relation: &Relation) -> Option<Vec<String>> {
    let grants = roles.grants_on(relation.id());
    if grants.is_empty() {
        return None;
    }
    // In PostgreSQL's order: `a`ppend, `r`ead, `w`rite, `d`elete.
    let letters = |privileges: &mut dyn Iterator<Item = crate::catalog::roles::Privilege>| {
        let mut letters: Vec<char> = privileges.map(|p| p.acl_letter()).collect();
        letters.sort_by_key(|l| "arwd".find(*l));
        letters.into_iter().collect::<String>()
    };
    let owner = BOOTSTRAP_SUPERUSER;
    let all = letters(&mut crate::catalog::roles::Privilege::ALL.into_iter());
    let mut items = vec![format!("{owner}={all}/{owner}")];
    items.extend(grants.into_iter().map(|(role, privileges)| {
        format!("{role}={}/{owner}", letters(&mut privileges.into_iter()))
    }));
    Some(items)
}

/// A `text[]` column.
fn text_lists(values: impl IntoIterator<Item = Option<Vec<String>>>) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for value in values {
        match value {
            Some(items) => {
                for item in items {
                    builder.values().append_value(item);
                }
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    Arc::new(builder.finish())
}

/// `pg_roles`: every role, as `\du` reads it.
fn pg_roles(roles: &Roles) -> Result<Arc<MemTable>> {
    let listed: Vec<_> = roles.list().collect();
    let n = listed.len();
    let flags = |f: &dyn Fn(&crate::catalog::roles::Role) -> bool| -> ArrayRef {
        Arc::new(BooleanArray::from_iter(listed.iter().map(|r| Some(f(r)))))
    };
    table(vec![
        ("oid", ints(listed.iter().map(|r| role_oid(&r.name)))),
        ("rolname", strings(listed.iter().map(|r| r.name.as_str()))),
        ("rolsuper", flags(&|r| r.superuser)),
        ("rolinherit", flags(&|_| true)),
        ("rolcreaterole", flags(&|r| r.superuser)),
        ("rolcreatedb", flags(&|_| false)),
        ("rolcanlogin", flags(&|r| r.login)),
        ("rolreplication", flags(&|_| false)),
        ("rolbypassrls", flags(&|r| r.superuser)),
        ("rolconnlimit", ints(listed.iter().map(|_| -1))),
        // Postgres shows this mask, never the verifier.
        ("rolpassword", strings(listed.iter().map(|_| "********"))),
        (
            "rolvaliduntil",
            new_null_array(
                &DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Microsecond,
                    Some("+00:00".into()),
                ),
                n,
            ),
        ),
        ("rolconfig", new_null_array(&text_list(), n)),
    ])
}

/// The `pg_catalog` for `relations` and `roles`.
pub fn pg_catalog(relations: &[Relation], roles: &Roles) -> Result<PgCatalog> {
    let listed: Vec<&Relation> = relations.iter().filter(|r| r.listed_to_clients()).collect();
    let oid = |r: &Relation| FIRST_RELATION_OID + r.id() as i64;
    let schema = Arc::new(MemorySchemaProvider::new());
    let register = |name: &str, table: Arc<MemTable>| -> Result<()> {
        schema.register_table(name.to_string(), table)?;
        Ok(())
    };
    register(
        "pg_namespace",
        table(vec![
            ("oid", ints(NAMESPACES.iter().map(|n| n.0))),
            ("nspname", strings(NAMESPACES.iter().map(|n| n.1))),
            ("nspowner", ints(NAMESPACES.iter().map(|_| OWNER_OID))),
        ])?,
    )?;
    register("pg_roles", pg_roles(roles)?)?;
    // Each primary key is an index relation (`<table>_pkey`, btree) with a
    // pg_index row and a constraint, as Postgres shows them.
    let keys = primary_keys(&listed);
    let classes: Vec<ClassRow> = listed
        .iter()
        .map(|r| ClassRow {
            oid: oid(r),
            name: r.name().to_string(),
            kind: match r {
                Relation::Table(_) => "r",
                _ => "m",
            },
            attributes: r.schema().fields().len() as i64,
            has_index: keys.iter().any(|k| k.table_oid == oid(r)),
            access_method: 0,
        })
        .chain(keys.iter().map(|k| ClassRow {
            oid: k.oid(),
            name: k.name.clone(),
            kind: "i",
            attributes: k.columns.len() as i64,
            has_index: false,
            access_method: BTREE_OID,
        }))
        .collect();
    let n = classes.len();
    let zeros = |n: usize| ints(std::iter::repeat_n(0, n));
    register(
        "pg_class",
        table(vec![
            ("oid", ints(classes.iter().map(|c| c.oid))),
            ("relname", strings(classes.iter().map(|c| c.name.as_str()))),
            ("relnamespace", ints(classes.iter().map(|_| PUBLIC_OID))),
            ("relkind", strings(classes.iter().map(|c| c.kind))),
            ("relowner", ints(classes.iter().map(|_| OWNER_OID))),
            ("relam", ints(classes.iter().map(|c| c.access_method))),
            ("reltuples", ints(classes.iter().map(|_| -1))),
            (
                "relhasindex",
                Arc::new(BooleanArray::from_iter(
                    classes.iter().map(|c| Some(c.has_index)),
                )),
            ),
            ("relpersistence", strings(classes.iter().map(|_| "p"))),
            ("relispartition", falses(n)),
            ("reltablespace", zeros(n)),
            ("relchecks", zeros(n)),
            ("relnatts", ints(classes.iter().map(|c| c.attributes))),
            ("relhasrules", falses(n)),
            ("relhastriggers", falses(n)),
            ("relhassubclass", falses(n)),
            ("relrowsecurity", falses(n)),
            ("relforcerowsecurity", falses(n)),
            ("relisshared", falses(n)),
            ("reloftype", zeros(n)),
            ("reltype", zeros(n)),
            ("reltoastrelid", zeros(n)),
            ("relfilenode", ints(classes.iter().map(|c| c.oid))),
            ("relpages", zeros(n)),
            ("relallvisible", zeros(n)),
            ("relreplident", strings(classes.iter().map(|_| "d"))),
            ("reloptions", new_null_array(&text_list(), n)),
            (
                "relacl",
                text_lists(
                    listed
                        .iter()
                        .map(|r| access_list(roles, r))
                        .chain(keys.iter().map(|_| None)),
                ),
            ),
            ("relpartbound", new_null_array(&DataType::Utf8, n)),
        ])?,
    )?;
    let k = keys.len();
    let trues = |n: usize| -> ArrayRef { Arc::new(BooleanArray::from(vec![true; n])) };
    register(
        "pg_index",
        table(vec![
            ("indexrelid", ints(keys.iter().map(PrimaryKeyIndex::oid))),
            ("indrelid", ints(keys.iter().map(|k| k.table_oid))),
            (
                "indnatts",
                ints(keys.iter().map(|k| k.columns.len() as i64)),
            ),
            ("indisprimary", trues(k)),
            ("indisunique", trues(k)),
            ("indisclustered", falses(k)),
            ("indisvalid", trues(k)),
            ("indisready", trues(k)),
            ("indislive", trues(k)),
            ("indisreplident", falses(k)),
            ("indisexclusion", falses(k)),
            ("indimmediate", trues(k)),
            (
                "indkey",
                strings_owned(keys.iter().map(|k| {
                    k.positions
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                })),
            ),
            ("indpred", new_null_array(&DataType::Utf8, k)),
            ("indexprs", new_null_array(&DataType::Utf8, k)),
        ])?,
    )?;
    register(
        "pg_constraint",
        table(vec![
            (
                "oid",
                ints(keys.iter().map(PrimaryKeyIndex::constraint_oid)),
            ),
            ("conname", strings(keys.iter().map(|k| k.name.as_str()))),
            ("connamespace", ints(keys.iter().map(|_| PUBLIC_OID))),
            ("conrelid", ints(keys.iter().map(|k| k.table_oid))),
            ("confrelid", zeros(k)),
            ("contypid", zeros(k)),
            ("conbin", new_null_array(&DataType::Utf8, k)),
            ("contype", strings(keys.iter().map(|_| "p"))),
            ("conindid", ints(keys.iter().map(PrimaryKeyIndex::oid))),
            ("conparentid", zeros(k)),
            ("conislocal", trues(k)),
            ("convalidated", trues(k)),
            ("condeferrable", falses(k)),
            ("condeferred", falses(k)),
            (
                "conkey",
                Arc::new(datafusion::arrow::array::ListArray::from_iter_primitive::<
                    datafusion::arrow::datatypes::Int64Type,
                    _,
                    _,
                >(keys.iter().map(|k| {
                    Some(k.positions.iter().map(|p| Some(*p)).collect::<Vec<_>>())
                }))),
            ),
        ])?,
    )?;
    let columns: Vec<(i64, usize, &Field)> = listed
        .iter()
        .flat_map(|r| {
            r.schema()
                .fields()
                .iter()
                .enumerate()
                .map(move |(i, f)| (oid(r), i + 1, f.as_ref()))
        })
        .collect();
    let type_oid = |f: &Field| pg_type(f).oid() as i64;
    register(
        "pg_attribute",
        table(vec![
            ("attrelid", ints(columns.iter().map(|c| c.0))),
            (
                "attname",
                strings(columns.iter().map(|c| c.2.name().as_str())),
            ),
            ("atttypid", ints(columns.iter().map(|c| type_oid(c.2)))),
            ("attnum", ints(columns.iter().map(|c| c.1 as i64))),
            (
                "attnotnull",
                Arc::new(BooleanArray::from_iter(
                    columns.iter().map(|c| Some(!c.2.is_nullable())),
                )),
            ),
            (
                "attisdropped",
                Arc::new(BooleanArray::from(vec![false; columns.len()])),
            ),
            ("atttypmod", ints(columns.iter().map(|_| -1))),
            (
                "attlen",
                ints(columns.iter().map(|c| {
                    TYPES
                        .iter()
                        .find(|t| t.0 == type_oid(c.2))
                        .map_or(-1, |t| t.2)
                })),
            ),
            (
                "atthasdef",
                Arc::new(BooleanArray::from(vec![false; columns.len()])),
            ),
            (
                "attcollation",
                ints(columns.iter().map(|c| collation_of(type_oid(c.2)))),
            ),
            ("attidentity", strings(columns.iter().map(|_| ""))),
            ("attgenerated", strings(columns.iter().map(|_| ""))),
            // Privileges are per relation, never per column.
            ("attacl", new_null_array(&text_list(), columns.len())),
        ])?,
    )?;
    register(
        "pg_type",
        table(vec![
            ("oid", ints(TYPES.iter().map(|t| t.0))),
            ("typname", strings(TYPES.iter().map(|t| t.1))),
            ("typnamespace", ints(TYPES.iter().map(|_| PG_CATALOG_OID))),
            ("typlen", ints(TYPES.iter().map(|t| t.2))),
            ("typtype", strings(TYPES.iter().map(|_| "b"))),
            ("typbasetype", ints(TYPES.iter().map(|_| 0))),
            ("typtypmod", ints(TYPES.iter().map(|_| -1))),
            (
                "typnotnull",
                Arc::new(BooleanArray::from(vec![false; TYPES.len()])),
            ),
            ("typelem", ints(TYPES.iter().map(|_| 0))),
            ("typarray", ints(TYPES.iter().map(|_| 0))),
            ("typdelim", strings(TYPES.iter().map(|_| ","))),
            ("typrelid", ints(TYPES.iter().map(|_| 0))),
            (
                "typcollation",
                ints(TYPES.iter().map(|t| collation_of(t.0))),
            ),
            ("typdefault", new_null_array(&DataType::Utf8, TYPES.len())),
        ])?,
    )?;
    register(
        "pg_collation",
        table(vec![
            ("oid", ints([DEFAULT_COLLATION_OID, 950])),
            ("collname", strings(["default", "C"])),
            ("collnamespace", ints([PG_CATALOG_OID, PG_CATALOG_OID])),
            ("collprovider", strings(["d", "c"])),
        ])?,
    )?;
    register(
        "pg_database",
        table(vec![
            ("oid", ints([16383])),
            ("datname", strings(["eddy"])),
            ("datdba", ints([OWNER_OID])),
            ("encoding", ints([6])),
            ("datcollate", strings(["C"])),
            ("datctype", strings(["C"])),
            ("daticulocale", new_null_array(&DataType::Utf8, 1)),
            ("datlocprovider", strings(["c"])),
            (
                "datacl",
                new_null_array(
                    &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                    1,
                ),
            ),
        ])?,
    )?;
    let empty = |names: &[(&str, DataType)]| {
        table(
            names
                .iter()
                .map(|(name, t)| (*name, new_null_array(t, 0)))
                .collect(),
        )
    };
    register(
        "pg_am",
        table(vec![
            ("oid", ints([BTREE_OID])),
            ("amname", strings(["btree"])),
            ("amtype", strings(["i"])),
        ])?,
    )?;
    register(
        "pg_attrdef",
        empty(&[
            ("oid", DataType::Int64),
            ("adrelid", DataType::Int64),
            ("adnum", DataType::Int64),
            ("adbin", DataType::Utf8),
        ])?,
    )?;
    register(
        "pg_description",
        empty(&[
            ("objoid", DataType::Int64),
            ("classoid", DataType::Int64),
            ("objsubid", DataType::Int32),
            ("description", DataType::Utf8),
        ])?,
    )?;
    for (name, columns) in EMPTY_TABLES {
        let columns: Vec<(&str, DataType)> = columns
            .iter()
            .map(|(column, kind)| (*column, kind.data_type()))
            .collect();
        register(name, empty(&columns)?)?;
    }
    register(
        "pg_proc",
        empty(&[
            ("oid", DataType::Int64),
            ("proname", DataType::Utf8),
            ("pronamespace", DataType::Int64),
            ("prokind", DataType::Utf8),
        ])?,
    )?;
    Ok(PgCatalog {
        schema,
        definitions: Arc::new(definitions(&keys)),
    })
}

/// A catalog function with a fixed answer shape.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CatalogFunction {
    name: String,
    signature: Signature,
    returns: DataType,
    /// Index and constraint definitions by OID (`pg_get_indexdef`,
    /// `pg_get_constraintdef`).
    definitions: Arc<BTreeMap<i64, String>>,
}

impl ScalarUDFImpl for CatalogFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let base = self.name.trim_start_matches("pg_catalog.");
        let value = match base {
            "pg_get_userbyid" => ScalarValue::Utf8(Some("eddy".into())),
            "pg_table_is_visible" | "pg_function_is_visible" | "pg_type_is_visible" => {
                ScalarValue::Boolean(Some(true))
            }
            "pg_get_function_result" | "pg_get_function_arguments" => ScalarValue::Utf8(None),
            "pg_encoding_to_char" => ScalarValue::Utf8(Some("UTF8".into())),
            "current_database" => ScalarValue::Utf8(Some("eddy".into())),
            "current_schema" => ScalarValue::Utf8(Some("public".into())),
            "obj_description" | "col_description" | "pg_get_expr" => ScalarValue::Utf8(None),
            "current_schemas" => ScalarValue::List(ScalarValue::new_list_nullable(
                &[
                    ScalarValue::Utf8(Some("pg_catalog".into())),
                    ScalarValue::Utf8(Some("public".into())),
                ],
                &DataType::Utf8,
            )),
            "version" => ScalarValue::Utf8(Some(format!(
                "PostgreSQL 15.0 (eddy {})",
                env!("CARGO_PKG_VERSION")
            ))),
            "to_regtype" => {
                // to_regtype(name): the type's OID, or NULL.
                let names = args.args[0].clone().into_array(args.number_rows)?;
                let names = datafusion::arrow::compute::cast(&names, &DataType::Utf8)?;
                let names = names
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8");
                let oids: Int64Array = names
                    .iter()
                    .map(|name| name.and_then(|n| TYPES.iter().find(|t| t.1 == n).map(|t| t.0)))
                    .collect();
                return Ok(ColumnarValue::Array(Arc::new(oids)));
            }
            "pg_get_indexdef" | "pg_get_constraintdef" => {
                let oids = args.args[0].clone().into_array(args.number_rows)?;
                let oids = datafusion::arrow::compute::cast(&oids, &DataType::Int64)?;
                let oids = oids
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("cast to Int64");
                let texts: StringArray = oids
                    .iter()
                    .map(|oid| oid.and_then(|oid| self.definitions.get(&oid).cloned()))
                    .collect();
                return Ok(ColumnarValue::Array(Arc::new(texts)));
            }
            "format_type" => {
                // format_type(type oid, typmod): the type's SQL name.
                let oids = args.args[0].clone().into_array(args.number_rows)?;
                let oids = datafusion::arrow::compute::cast(&oids, &DataType::Int64)?;
                let oids = oids
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("cast to Int64");
                let names: StringArray = oids.iter().map(|oid| oid.map(type_sql_name)).collect();
                return Ok(ColumnarValue::Array(Arc::new(names)));
            }
            other => {
                return Err(datafusion::error::DataFusionError::Internal(format!(
                    "catalog function {other} has no body"
                )))
            }
        };
        Ok(ColumnarValue::Scalar(value))
    }
}

fn type_sql_name(oid: i64) -> String {
    match oid {
        16 => "boolean",
        17 => "bytea",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1700 => "numeric",
        _ => "???",
    }
    .to_string()
}

impl PgCatalog {
    /// Registers the catalog functions in `state`.
    pub fn register_functions(&self, state: &mut SessionState) -> Result<()> {
        register_functions(state, &self.definitions)
    }
}

fn register_functions(
    state: &mut SessionState,
    definitions: &Arc<BTreeMap<i64, String>>,
) -> Result<()> {
    // (name, arity, returns); `pg_get_expr` & co. also take up to two
    // more arguments (a column number, a `pretty` flag).
    let functions: [(&str, usize, DataType); 18] = [
        ("to_regtype", 1, DataType::Int64),
        ("pg_get_indexdef", 1, DataType::Utf8),
        ("pg_get_constraintdef", 1, DataType::Utf8),
        ("pg_get_expr", 2, DataType::Utf8),
        (
            "current_schemas",
            1,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        ),
        ("current_database", 0, DataType::Utf8),
        ("current_schema", 0, DataType::Utf8),
        ("pg_get_userbyid", 1, DataType::Utf8),
        ("pg_table_is_visible", 1, DataType::Boolean),
        ("pg_type_is_visible", 1, DataType::Boolean),
        ("pg_function_is_visible", 1, DataType::Boolean),
        ("pg_get_function_result", 1, DataType::Utf8),
        ("pg_get_function_arguments", 1, DataType::Utf8),
        ("pg_encoding_to_char", 1, DataType::Utf8),
        ("format_type", 2, DataType::Utf8),
        ("obj_description", 2, DataType::Utf8),
        ("col_description", 2, DataType::Utf8),
        ("version", 0, DataType::Utf8),
    ];
    for (name, arity, returns) in functions {
        for name in [name.to_string(), format!("pg_catalog.{name}")] {
            let function = CatalogFunction {
                name,
                signature: if arity == 0 {
                    Signature::nullary(Volatility::Stable)
                } else {
                    Signature::one_of(
                        (arity..=arity + 2).map(TypeSignature::Any).collect(),
                        Volatility::Stable,
                    )
                },
                returns: returns.clone(),
                definitions: definitions.clone(),
            };
            state.register_udf(Arc::new(ScalarUDF::new_from_impl(function)))?;
        }
    }
    // Built-in functions psql calls by their pg_catalog. name.
    for (name, qualified) in [
        ("array_to_string", "pg_catalog.array_to_string"),
        ("lower", "pg_catalog.lower"),
        ("upper", "pg_catalog.upper"),
        ("length", "pg_catalog.length"),
        ("concat", "pg_catalog.concat"),
        ("regexp_replace", "pg_catalog.regexp_replace"),
    ] {
        if let Some(builtin) = state.scalar_functions().get(name).cloned() {
            state.register_udf(Arc::new(builtin.as_ref().clone().with_aliases([qualified])))?;
        }
    }
    Ok(())
}

/// The OID `'name'::regclass` stands for: the catalog tables psql and
/// drivers name, or a relation of eddy's.
fn regclass_oid(name: &str, catalog: &crate::catalog::Catalog) -> Option<i64> {
    let name = name.trim_matches('"');
    let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
    let name = name.strip_prefix("public.").unwrap_or(name);
    match name {
        "pg_class" => Some(1259),
        "pg_type" => Some(1247),
        "pg_attribute" => Some(1249),
        "pg_proc" => Some(1255),
        "pg_namespace" => Some(2615),
        "pg_database" => Some(1262),
        "pg_description" => Some(2609),
        "pg_index" => Some(2610),
        "pg_am" => Some(2601),
        _ => catalog
            .get(name)
            .map(|r| FIRST_RELATION_OID + r.id() as i64),
    }
}

/// `$n::regclass` with the bound value of `$n` written in: the name
/// becomes a literal, which [`rewrite_regclass`] resolves (drivers bind
/// catalog names as parameters: SQLAlchemy's `CAST(%(p)s AS REGCLASS)`).
pub fn inline_regclass_parameters(
    statement: &mut datafusion::sql::sqlparser::ast::Statement,
    params: &[datafusion::common::ScalarValue],
) {
    use datafusion::common::ScalarValue;
    use datafusion::sql::sqlparser::ast::{self, visit_expressions_mut, Expr};
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Cast {
            data_type: ast::DataType::Regclass,
            expr: inner,
            ..
        } = expr
        {
            if let Expr::Value(value) = inner.as_mut() {
                let index = match &value.value {
                    ast::Value::Placeholder(p) => {
                        p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
                    }
                    _ => None,
                };
                let bound =
                    index
                        .and_then(|n| params.get(n.wrapping_sub(1)))
                        .and_then(|v| match v {
                            ScalarValue::Utf8(Some(s))
                            | ScalarValue::LargeUtf8(Some(s))
                            | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
                            _ => None,
                        });
                if let Some(name) = bound {
                    value.value = ast::Value::SingleQuotedString(name);
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Rewrites what DataFusion cannot plan but Postgres clients send:
/// `'name'::regclass` becomes the relation's OID (an unknown name is
/// Postgres' error 42P01), `expr::regclass` the OID as a number, and the bare
/// words `current_catalog`, `current_user`, `session_user` their values
/// (the last two: the session's role, `user`).
pub fn rewrite_regclass(
    statement: &mut datafusion::sql::sqlparser::ast::Statement,
    catalog: &crate::catalog::Catalog,
    user: &str,
) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{self, visit_expressions_mut, Expr};
    use std::ops::ControlFlow;
    let flow = visit_expressions_mut(statement, |expr| {
        // `x COLLATE "C"` / `pg_catalog.default`: eddy compares strings one
        // way (byte order, which is "C").
        if let Expr::Collate { expr: inner, .. } = expr {
            *expr = (**inner).clone();
        }
        // `a OPERATOR(pg_catalog.~) b`: the schema-qualified spelling of a
        // built-in operator.
        if let Expr::BinaryOp { op, .. } = expr {
            if let ast::BinaryOperator::PGCustomBinaryOperator(parts) = op {
                if let Some(builtin) = parts.last().and_then(|o| builtin_operator(o)) {
                    *op = builtin;
                }
            }
        }
        // A correlated scalar subquery over the catalog (psql's `\d`
        // column query): DataFusion wants it aggregated; the catalog
        // subqueries clients send return at most one row, so max() of it
        // is the row.
        if let Expr::Subquery(_) = expr {
            rewrite_catalog_subquery(expr);
        }
        // `array(SELECT e FROM ... ORDER BY ...)`: the same rows through
        // array_agg.
        if let Expr::Function(function) = expr {
            if function.name.to_string().eq_ignore_ascii_case("array") {
                if let ast::FunctionArguments::Subquery(query) = &function.args {
                    // Over a catalog table eddy keeps empty: no elements
                    // (a NULL array, which clients show as they show `{}`).
                    if provably_empty_query(query).is_some() {
                        *expr = Expr::Cast {
                            kind: ast::CastKind::Cast,
                            expr: Box::new(Expr::value(ast::Value::Null)),
                            data_type: ast::DataType::Array(ast::ArrayElemTypeDef::SquareBracket(
                                Box::new(ast::DataType::Text),
                                None,
                            )),
                            array: false,
                            format: None,
                        };
                    } else if let Some(aggregated) = array_of_subquery(query) {
                        *expr = aggregated;
                        rewrite_catalog_subquery(expr);
                    }
                }
            }
        }
        // Casts to `pg_catalog.text` & co.: the built-in types by their
        // qualified (or internal) names.
        if let Expr::Cast { data_type, .. } = expr {
            if let ast::DataType::Custom(name, _) = data_type {
                let name = name.to_string().to_lowercase();
                let plain = match name.trim_start_matches("pg_catalog.") {
                    "text" | "name" | "varchar" | "bpchar" | "\"char\"" | "char" => {
                        Some(ast::DataType::Text)
                    }
                    "int2" | "smallint" => Some(ast::DataType::SmallInt(None)),
                    "int4" | "integer" | "int" => Some(ast::DataType::Int(None)),
                    "int8" | "bigint" => Some(ast::DataType::BigInt(None)),
                    "bool" | "boolean" => Some(ast::DataType::Boolean),
                    "float8" => Some(ast::DataType::DoublePrecision),
                    _ => None,
                };
                if let Some(plain) = plain {
                    *data_type = plain;
                }
            }
        }
        // Postgres' parameterless "functions" spelled as bare words (the
        // parser gives them as functions without an argument list).
        let bare_word = match &*expr {
            Expr::Identifier(ident) if ident.quote_style.is_none() => Some(ident.value.clone()),
            Expr::Function(function) if matches!(function.args, ast::FunctionArguments::None) => {
                Some(function.name.to_string())
            }
            _ => None,
        };
        if let Some(word) = bare_word {
            match word.to_lowercase().as_str() {
                "current_catalog" => {
                    *expr = Expr::value(ast::Value::SingleQuotedString("eddy".into()))
                }
                "current_user" | "session_user" | "current_role" => {
                    *expr = Expr::value(ast::Value::SingleQuotedString(user.to_string()))
                }
                _ => {}
            }
            return ControlFlow::Continue(());
        }
        let Expr::Cast {
            data_type,
            expr: inner,
            ..
        } = expr
        else {
            return ControlFlow::Continue(());
        };
        // The OID alias types: regclass, and regtype & co. by name.
        let alias = match data_type {
            ast::DataType::Regclass => "regclass".to_string(),
            ast::DataType::Custom(name, _) => name.to_string().to_lowercase(),
            _ => return ControlFlow::Continue(()),
        };
        let alias = alias.trim_start_matches("pg_catalog.");
        if !matches!(
            alias,
            "regclass"
                | "regtype"
                | "regproc"
                | "regprocedure"
                | "regnamespace"
                | "regrole"
                | "oid"
        ) {
            return ControlFlow::Continue(());
        }
        let replacement = match inner.as_ref() {
            Expr::Value(value) => match (&value.value, alias) {
                (ast::Value::SingleQuotedString(name), "regclass") => {
                    match regclass_oid(name, catalog) {
                        Some(oid) => Expr::value(ast::Value::Number(oid.to_string(), false)),
                        None => {
                            return ControlFlow::Break(crate::error::EddyError::UndefinedRelation(
                                format!("relation \"{name}\" does not exist"),
                            ))
                        }
                    }
                }
                (ast::Value::SingleQuotedString(name), "regtype") => {
                    match TYPES.iter().find(|t| t.1 == name.as_str()) {
                        Some(t) => Expr::value(ast::Value::Number(t.0.to_string(), false)),
                        None => {
                            return ControlFlow::Break(crate::error::EddyError::UndefinedRelation(
                                format!("type \"{name}\" does not exist"),
                            ))
                        }
                    }
                }
                _ => return ControlFlow::Continue(()),
            },
            other => Expr::Cast {
                kind: ast::CastKind::DoubleColon,
                expr: Box::new(other.clone()),
                data_type: ast::DataType::BigInt(None),
                array: false,
                format: None,
            },
        };
        *expr = replacement;
        ControlFlow::Continue(())
    });
    if let ControlFlow::Break(error) = flow {
        return Err(error);
    }
    // pg_catalog is on every search path: unqualified pg_* tables are its.
    let _ = ast::visit_relations_mut(statement, |name| {
        if let [part] = name.0.as_slice() {
            if let Some(ident) = part.as_ident() {
                let table = ident.value.to_lowercase();
                if ident.quote_style.is_none() && CATALOG_TABLES.contains(&table.as_str()) {
                    *name = ast::ObjectName::from(vec![
                        ast::Ident::new("pg_catalog"),
                        ast::Ident::new(table),
                    ]);
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

/// Whether `expr` (as SQL text) is a call of an aggregate function that
/// catalog queries use.
fn is_aggregate_call(expr: &str) -> bool {
    let lower = expr.to_lowercase();
    let lower = lower.trim_start_matches("pg_catalog.");
    [
        "count(",
        "max(",
        "min(",
        "sum(",
        "array_agg(",
        "string_agg(",
        "bool_",
    ]
    .iter()
    .any(|f| lower.starts_with(f))
}

/// A column type of the catalog tables eddy keeps empty.
#[derive(Clone, Copy)]
enum Column {
    Int,
    Float,
    Text,
    Bool,
    IntList,
}

impl Column {
    fn data_type(self) -> DataType {
        match self {
            Column::Int => DataType::Int64,
            Column::Float => DataType::Float64,
            Column::Text => DataType::Utf8,
            Column::Bool => DataType::Boolean,
            Column::IntList => DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
        }
    }
}

/// The catalog tables eddy keeps empty, with the columns clients read:
/// eddy has no row security, role membership, enums, sequences,
/// extended statistics, publications, inheritance, triggers or rules.
const EMPTY_TABLES: [(&str, &[(&str, Column)]); 11] = {
    use Column::{Bool, Float, Int, IntList, Text};
    [
        (
            "pg_policy",
            &[
                ("oid", Int),
                ("polname", Text),
                ("polrelid", Int),
                ("polcmd", Text),
                ("polpermissive", Bool),
                ("polroles", IntList),
                ("polqual", Text),
                ("polwithcheck", Text),
            ],
        ),
        (
            "pg_auth_members",
            &[
                ("oid", Int),
                ("roleid", Int),
                ("member", Int),
                ("grantor", Int),
                ("admin_option", Bool),
            ],
        ),
        (
            "pg_enum",
            &[
                ("oid", Int),
                ("enumtypid", Int),
                ("enumsortorder", Float),
                ("enumlabel", Text),
            ],
        ),
        (
            "pg_sequence",
            &[
                ("seqrelid", Int),
                ("seqstart", Int),
                ("seqincrement", Int),
                ("seqmin", Int),
                ("seqmax", Int),
                ("seqcache", Int),
                ("seqcycle", Bool),
            ],
        ),
        (
            "pg_statistic_ext",
            &[
                ("oid", Int),
                ("stxrelid", Int),
                ("stxname", Text),
                ("stxnamespace", Int),
                ("stxkind", Text),
                ("stxstattarget", Int),
            ],
        ),
        (
            "pg_publication",
            &[("oid", Int), ("pubname", Text), ("puballtables", Bool)],
        ),
        (
            "pg_publication_rel",
            &[
                ("oid", Int),
                ("prpubid", Int),
                ("prrelid", Int),
                ("prqual", Text),
            ],
        ),
        (
            "pg_publication_namespace",
            &[("oid", Int), ("pnpubid", Int), ("pnnspid", Int)],
        ),
        (
            "pg_inherits",
            &[
                ("inhrelid", Int),
                ("inhparent", Int),
                ("inhseqno", Int),
                ("inhdetachpending", Bool),
            ],
        ),
        (
            "pg_trigger",
            &[
                ("oid", Int),
                ("tgrelid", Int),
                ("tgname", Text),
                ("tgisinternal", Bool),
                ("tgenabled", Text),
                ("tgparentid", Int),
            ],
        ),
        (
            "pg_rewrite",
            &[("oid", Int), ("rulename", Text), ("ev_class", Int)],
        ),
    ]
};

/// When `statement` provably returns no rows because every branch of it
/// reads an empty catalog table first (then only inner or left joins, and
/// no aggregate without GROUP BY, which would make one row): its columns,
/// as text. psql's `\d` asks such questions (policies, publications, ...)
/// with constructs DataFusion cannot plan.
pub fn provably_empty(
    statement: &datafusion::sql::sqlparser::ast::Statement,
) -> Option<datafusion::arrow::datatypes::SchemaRef> {
    use datafusion::sql::sqlparser::ast::Statement;
    let Statement::Query(query) = statement else {
        return None;
    };
    provably_empty_query(query)
}

/// Whether a SELECT (each branch of a set operation) reads an empty
/// catalog table; `names` gets the first branch's column names.
fn empty_branch(body: &datafusion::sql::sqlparser::ast::SetExpr, names: &mut Vec<String>) -> bool {
    use datafusion::sql::sqlparser::ast::{JoinOperator, SelectItem, SetExpr, TableFactor};
    match body {
        SetExpr::Select(select) => {
            // FROM items are cross-joined: one empty item (an empty
            // table whose own joins keep its rows only) empties all.
            let empty_from = select.from.iter().any(|from| {
                let TableFactor::Table { name, .. } = &from.relation else {
                    return false;
                };
                let table = name.to_string().to_lowercase();
                let joins_keep_it_empty = from.joins.iter().all(|j| {
                    matches!(
                        j.join_operator,
                        JoinOperator::Join(_)
                            | JoinOperator::Inner(_)
                            | JoinOperator::Left(_)
                            | JoinOperator::LeftOuter(_)
                    )
                });
                let table = table.trim_start_matches("pg_catalog.");
                EMPTY_TABLES.iter().any(|(name, _)| *name == table) && joins_keep_it_empty
            });
            // An aggregate over no rows is still one row.
            let grouped_or_plain = select
                .projection
                .iter()
                .all(|item| !is_aggregate_call(&item.to_string()));
            if names.is_empty() {
                for (i, item) in select.projection.iter().enumerate() {
                    names.push(match item {
                        SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
                        SelectItem::UnnamedExpr(e) => e
                            .to_string()
                            .rsplit('.')
                            .next()
                            .filter(|n| n.chars().all(|c| c.is_alphanumeric() || c == '_'))
                            .map_or(format!("column{}", i + 1), str::to_string),
                        _ => format!("column{}", i + 1),
                    });
                }
            }
            empty_from && grouped_or_plain
        }
        SetExpr::SetOperation { left, right, .. } => {
            empty_branch(left, names) && empty_branch(right, names)
        }
        SetExpr::Query(query) => empty_branch(&query.body, names),
        _ => false,
    }
}
/// [`provably_empty`] for a query.
fn provably_empty_query(
    query: &datafusion::sql::sqlparser::ast::Query,
) -> Option<datafusion::arrow::datatypes::SchemaRef> {
    let mut names = vec![];
    if !empty_branch(&query.body, &mut names) {
        return None;
    }
    Some(Arc::new(Schema::new(
        names
            .into_iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )))
}

/// `array(SELECT e FROM ... [ORDER BY o])` as
/// `(SELECT array_agg(e ORDER BY o) FROM ...)`.
fn array_of_subquery(
    query: &datafusion::sql::sqlparser::ast::Query,
) -> Option<datafusion::sql::sqlparser::ast::Expr> {
    use datafusion::sql::sqlparser::ast::{OrderByKind, SelectItem, SetExpr};
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [SelectItem::UnnamedExpr(value) | SelectItem::ExprWithAlias { expr: value, .. }] =
        select.projection.as_slice()
    else {
        return None;
    };
    let order: Vec<String> = match query.order_by.as_ref().map(|o| &o.kind) {
        Some(OrderByKind::Expressions(items)) => items
            .iter()
            .map(|item| {
                // ORDER BY 1 names the projected value.
                let text = item.expr.to_string();
                let by = if text == "1" { value.to_string() } else { text };
                let direction = item.to_string();
                let rest = direction.trim_start_matches(&item.expr.to_string());
                format!("{by}{rest}")
            })
            .collect(),
        _ => vec![],
    };
    let order = if order.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", order.join(", "))
    };
    let mut select = select.clone();
    select.projection = vec![];
    let rest = select.to_string();
    let from = rest.trim_start_matches("SELECT").trim_start();
    datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(&format!("(SELECT array_agg({value}{order}) {from})"))
    .and_then(|mut p| p.parse_expr())
    .ok()
}

/// Makes a correlated scalar subquery over the catalog (psql's `\d`
/// column query) one DataFusion can decorrelate, keeping its meaning:
/// - a condition on the outer row only moves out:
///   `(SELECT v FROM t WHERE p AND outer)` is
///   `CASE WHEN outer THEN (SELECT v FROM t WHERE p) END`;
/// - an outer column equal to an inner one (`inner = outer`) stands for it
///   in the other conditions, so they no longer mention the outer row;
/// - the single value is wrapped in `max()` (DataFusion wants correlated
///   scalar subqueries aggregated; these return at most one row).
fn rewrite_catalog_subquery(expr: &mut datafusion::sql::sqlparser::ast::Expr) {
    use datafusion::sql::sqlparser::ast::{
        visit_expressions, BinaryOperator, Expr, GroupByExpr, SelectItem, SetExpr, TableFactor,
    };
    use std::ops::ControlFlow;
    let Expr::Subquery(query) = expr else {
        return;
    };
    if !query.to_string().contains("pg_catalog.") {
        return;
    }
    // Over a catalog table eddy keeps empty (and not aggregating): NULL.
    if provably_empty_query(query).is_some() {
        *expr = Expr::value(datafusion::sql::sqlparser::ast::Value::Null);
        return;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    let [item] = select.projection.as_mut_slice() else {
        return;
    };
    let (SelectItem::UnnamedExpr(value) | SelectItem::ExprWithAlias { expr: value, .. }) = item
    else {
        return;
    };
    if grouped || matches!(value, Expr::Value(_)) {
        return;
    }
    // The subquery's own tables, by the names its columns use.
    let mut inner = std::collections::HashSet::new();
    for from in &select.from {
        for factor in std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation))
        {
            if let TableFactor::Table { name, alias, .. } = factor {
                let used = match alias {
                    Some(alias) => alias.name.value.to_lowercase(),
                    None => name
                        .to_string()
                        .rsplit('.')
                        .next()
                        .unwrap_or("")
                        .to_lowercase(),
                };
                inner.insert(used);
            }
        }
    }
    inner.insert(String::new());
    let qualifiers = |e: &Expr| {
        let mut found = vec![];
        let _ = visit_expressions(e, |e| {
            // `t.c` or `schema.t.c`: the table is the part before the column.
            if let Expr::CompoundIdentifier(parts) = e {
                if parts.len() >= 2 {
                    found.push(parts[parts.len() - 2].value.to_lowercase());
                }
            }
            // A bare column is the innermost scope's (as these queries use
            // it): "" stands for the subquery's own tables.
            if let Expr::Identifier(_) = e {
                found.push(String::new());
            }
            ControlFlow::<()>::Continue(())
        });
        found
    };
    let is_outer = |e: &Expr| {
        let q = qualifiers(e);
        !q.is_empty() && q.iter().all(|q| !inner.contains(q))
    };
    let is_inner = |e: &Expr| qualifiers(e).iter().all(|q| inner.contains(q));
    // The WHERE clause's conjuncts.
    let mut conjuncts = vec![];
    let mut pending: Vec<Expr> = select.selection.take().into_iter().collect();
    while let Some(e) = pending.pop() {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                pending.push(*right);
                pending.push(*left);
            }
            Expr::Nested(inner)
                if matches!(
                    *inner,
                    Expr::BinaryOp {
                        op: BinaryOperator::And,
                        ..
                    }
                ) =>
            {
                pending.push(*inner)
            }
            other => conjuncts.push(other),
        }
    }
    let mut stands_for = vec![];
    for c in &conjuncts {
        if let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = c
        {
            if is_inner(left) && is_outer(right) {
                stands_for.push((right.to_string(), left.to_string()));
            } else if is_outer(left) && is_inner(right) {
                stands_for.push((left.to_string(), right.to_string()));
            }
        }
    }
    let (mut kept, mut moved) = (vec![], vec![]);
    for c in conjuncts {
        let text = c.to_string();
        if is_outer(&c) {
            moved.push(text);
        } else if stands_for.iter().any(|(outer, inner)| {
            text == format!("{inner} = {outer}") || text == format!("{outer} = {inner}")
        }) {
            kept.push(text);
        } else {
            let mut substituted = text.clone();
            for (outer, inner) in &stands_for {
                substituted = substituted.replace(outer.as_str(), inner.as_str());
            }
            kept.push(substituted);
        }
    }
    let aggregated = is_aggregate_call(&value.to_string());
    let parse = |sql: &str| {
        datafusion::sql::sqlparser::parser::Parser::new(
            &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
        )
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .ok()
    };
    if !aggregated {
        if let Some(wrapped) = parse(&format!("max({value})")) {
            *value = wrapped;
        }
    }
    if !kept.is_empty() {
        select.selection = parse(&kept.join(" AND "));
    }
    if !moved.is_empty() {
        let conditions: Vec<String> = moved.iter().map(|m| format!("({m})")).collect();
        if let Some(case) = parse(&format!(
            "CASE WHEN {} THEN ({query}) END",
            conditions.join(" AND ")
        )) {
            *expr = case;
        }
    }
}

/// The built-in binary operator spelled `op` (as in `OPERATOR(pg_catalog.op)`).
fn builtin_operator(op: &str) -> Option<datafusion::sql::sqlparser::ast::BinaryOperator> {
    use datafusion::sql::sqlparser::ast::BinaryOperator as Op;
    Some(match op {
        "~" => Op::PGRegexMatch,
        "~*" => Op::PGRegexIMatch,
        "!~" => Op::PGRegexNotMatch,
        "!~*" => Op::PGRegexNotIMatch,
        "=" => Op::Eq,
        "<>" | "!=" => Op::NotEq,
        "<" => Op::Lt,
        "<=" => Op::LtEq,
        ">" => Op::Gt,
        ">=" => Op::GtEq,
        "~~" => Op::PGLikeMatch,
        "~~*" => Op::PGILikeMatch,
        "+" => Op::Plus,
        "-" => Op::Minus,
        "*" => Op::Multiply,
        "/" => Op::Divide,
        "||" => Op::StringConcat,
        _ => return None,
    })
}

/// The tables [`pg_catalog`] provides.
const CATALOG_TABLES: [&str; 24] = [
    "pg_namespace",
    "pg_collation",
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_database",
    "pg_am",
    "pg_attrdef",
    "pg_description",
    "pg_index",
    "pg_proc",
    "pg_settings",
    "pg_policy",
    "pg_roles",
    "pg_enum",
    "pg_sequence",
    "pg_statistic_ext",
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_inherits",
    "pg_constraint",
    "pg_trigger",
    "pg_rewrite",
];
