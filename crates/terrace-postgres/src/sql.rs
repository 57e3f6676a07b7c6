//! Statements prepared once per connection and reused.
//!
//! A query given as text is parsed and planned by the server every time,
//! and costs an extra round trip to prepare. Through [`Sql`] every statement
//! is prepared on first use on a connection and then taken from that
//! connection's cache (deadpool's `prepare_cached`): one round trip per
//! statement, and plans the server can reuse.

use std::future::Future;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, GenericClient, Row, Statement};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A connection or transaction that runs cached prepared statements.
pub(crate) trait Sql: Sync {
    type Pg: GenericClient + Sync;

    /// The underlying client or transaction.
    fn pg(&self) -> &Self::Pg;

    /// The statement for `sql`, prepared once per connection.
    fn prepared<'a>(&'a self, sql: &'a str) -> impl Future<Output = Result<Statement, Error>> + Send + 'a;

    fn query_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a {
        async move {
            let st = self.prepared(sql).await?;
            self.pg().query(&st, params).await
        }
    }

    fn query_one_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a {
        async move {
            let st = self.prepared(sql).await?;
            self.pg().query_one(&st, params).await
        }
    }

    fn query_opt_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a {
        async move {
            let st = self.prepared(sql).await?;
            self.pg().query_opt(&st, params).await
        }
    }

    fn execute_cached<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a {
        async move {
            let st = self.prepared(sql).await?;
            self.pg().execute(&st, params).await
        }
    }
}

impl Sql for deadpool_postgres::Client {
    type Pg = tokio_postgres::Client;
    fn pg(&self) -> &tokio_postgres::Client {
        self
    }
    fn prepared<'a>(&'a self, sql: &'a str) -> impl Future<Output = Result<Statement, Error>> + Send + 'a {
        self.prepare_cached(sql)
    }
}

impl<'t> Sql for deadpool_postgres::Transaction<'t> {
    type Pg = tokio_postgres::Transaction<'t>;
    fn pg(&self) -> &tokio_postgres::Transaction<'t> {
        self
    }
    fn prepared<'a>(&'a self, sql: &'a str) -> impl Future<Output = Result<Statement, Error>> + Send + 'a {
        self.prepare_cached(sql)
    }
}
