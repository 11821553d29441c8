//! The parts of the OpenAPI document the bounded contexts' `#[utoipa::path]` attributes name: the
//! problem responses (one per [`ProblemKind`], `application/problem+json`, with an example built by
//! [`Problem`] itself) and [`examples`] of the objects. A leaf: it knows [`crate::http`] only, so the
//! contexts and [`crate::openapi`] (which assembles the document) both use it without a cycle.

use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use crate::http::{FieldError, Problem, ProblemKind};

pub mod examples;

/// The problem response of `kind`, its example the body [`Problem`] really sends.
fn problem_response(
    kind: ProblemKind,
    detail: &str,
    errors: &[(&str, &str)],
) -> RefOr<utoipa::openapi::Response> {
    let problem = if errors.is_empty() {
        Problem::new(kind, detail)
    } else {
        Problem::invalid(
            errors
                .iter()
                .map(|(f, m)| FieldError::new(*f, *m))
                .collect(),
        )
    };
    let details = problem.details();
    let description = format!("{} (`{}`)", details.title, details.type_uri);
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ProblemDetails")))
        .example(serde_json::to_value(&details).ok())
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", content)
        .build()
        .into()
}

/// One `components/responses` entry per [`ProblemKind`]; handlers name them in
/// `responses((status = 404, response = problems::NotFound))`.
pub mod problems {
    use super::problem_response;
    use crate::http::ProblemKind;

    macro_rules! problem_responses {
        ($($name:ident => $detail:expr, [$(($field:expr, $message:expr)),*];)*) => {$(
            #[doc = concat!("The `", stringify!($name), "` problem response.")]
            pub struct $name;

            impl<'r> utoipa::ToResponse<'r> for $name {
                fn response() -> (&'r str, utoipa::openapi::RefOr<utoipa::openapi::Response>) {
                    let errors: &[(&str, &str)] = &[$(($field, $message)),*];
                    (stringify!($name), problem_response(ProblemKind::$name, $detail, errors))
                }
            }
        )*};
    }

    problem_responses! {
        Validation => "", [("name", "must be 1 to 100 characters")];
        MalformedJson => "EOF while parsing an object at line 1 column 15", [];
        PayloadTooLarge => "the body exceeds 65536 bytes", [];
        UnsupportedMediaType => "content-type `text/plain` is not application/json", [];
        Unauthorized => "missing `Authorization: Bearer <admin token>`", [];
        NotFound => "org `0f8fad5b-d9cb-469f-a165-70867728950e` not found", [];
        Conflict => "an org named `acme` already exists", [];
        PreconditionFailed => "the org changed: its current ETag is \"3\"", [];
        PreconditionRequired => "send `If-Match` with the ETag you read (optimistic concurrency)", [];
        Unavailable => "the database is unreachable; retry later", [];
        Internal => "internal error", [];
        InvalidSignature => "no `v1` signature matches", [];
    }
}
