//! Cosmos DB failures → the engine's error classes.
//!
//! Transient service and transport failures (408, 410, 429 after the SDK's own throttle retries,
//! 449, 5xx, client-side transport errors) are retriable. Bad credentials and missing
//! databases/containers stop the pipeline. Everything else is a problem with this one document.

use azure_data_cosmos::CosmosError;
use feedline_engine::ComponentError;

/// What a failed Cosmos DB call means for the pipeline. `what` names the operation for the log.
pub fn classify(e: &CosmosError, what: &str) -> ComponentError {
    let status = e.status();
    let code = u16::from(status.status_code());
    let message = format!("cosmos {what}: {e}");
    match code {
        401 => ComponentError::fatal(format!("{message} (check the account key)")),
        403 if status.is_write_forbidden() || status.is_database_account_not_found() => {
            ComponentError::retriable(message)
        }
        403 => ComponentError::fatal(message),
        404 if status.is_read_session_not_available() => ComponentError::retriable(message),
        404 => ComponentError::fatal(format!("{message} (does the database/container exist?)")),
        408 | 410 | 429 | 449 => ComponentError::retriable(message),
        400 | 409 | 412 | 413 | 422 => ComponentError::reject(message),
        c if c >= 500 => ComponentError::retriable(message),
        // Synthetic client-side codes (transport failures, timeouts) and anything unknown.
        _ => ComponentError::retriable(message),
    }
}

/// HTTP status code of a failure.
pub fn code(e: &CosmosError) -> u16 {
    u16::from(e.status().status_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_data_cosmos::CosmosStatus;
    use feedline_engine::ErrorClass;

    fn err(code: u16) -> CosmosError {
        let status = azure_core::http::StatusCode::from(code);
        CosmosError::builder().with_status(CosmosStatus::new(status)).with_message("x").build()
    }

    #[test]
    fn classes() {
        for (code, class) in [
            (401, ErrorClass::Fatal),
            (403, ErrorClass::Fatal),
            (404, ErrorClass::Fatal),
            (400, ErrorClass::Reject),
            (409, ErrorClass::Reject),
            (413, ErrorClass::Reject),
            (408, ErrorClass::Retriable),
            (410, ErrorClass::Retriable),
            (429, ErrorClass::Retriable),
            (503, ErrorClass::Retriable),
        ] {
            assert_eq!(classify(&err(code), "t").class, class, "{code}");
        }
    }
}
