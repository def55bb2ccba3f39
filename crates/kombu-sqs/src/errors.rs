//! AWS SDK errors as kombu errors with the right [`ErrorKind`].

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use kombu_core::{Error, ErrorKind};

/// The kind for an AWS error code (SQS's query and JSON protocols, SNS).
///
/// ```
/// use kombu_core::ErrorKind;
/// use kombu_sqs::error_kind_for_code;
/// assert_eq!(error_kind_for_code("AWS.SimpleQueueService.NonExistentQueue"), ErrorKind::NotFound);
/// assert_eq!(error_kind_for_code("InvalidClientTokenId"), ErrorKind::Auth);
/// assert!(kombu_core::Error::new(error_kind_for_code("ThrottlingException"), "x").is_recoverable());
/// ```
pub fn error_kind_for_code(code: &str) -> ErrorKind {
    let code = code
        .strip_prefix("AWS.SimpleQueueService.")
        .or_else(|| code.strip_prefix("com.amazonaws.sqs#"))
        .unwrap_or(code);
    match code {
        "NonExistentQueue"
        | "QueueDoesNotExist"
        | "NotFound"
        | "NotFoundException"
        | "ResourceNotFoundException" => ErrorKind::NotFound,
        "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "InvalidSecurity"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "AccessDenied"
        | "AccessDeniedException"
        | "AuthorizationError"
        | "OptInRequired"
        | "KMS.AccessDeniedException" => ErrorKind::Auth,
        // Retrying later helps: reported as a timeout, which is recoverable.
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "KmsThrottled"
        | "KMS.ThrottlingException"
        | "RequestTimeout"
        | "RequestTimeoutException" => ErrorKind::Timeout,
        "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "InternalErrorException"
        | "KMSInternal" => ErrorKind::ConnectionLost,
        "QueueAlreadyExists"
        | "QueueNameExists"
        | "QueueDeletedRecently"
        | "PurgeQueueInProgress"
        | "ReceiptHandleIsInvalid"
        | "InvalidReceiptHandle"
        | "MessageNotInflight"
        | "InvalidIdFormat"
        | "FifoThrottlingException" => ErrorKind::PreconditionFailed,
        "OverLimit"
        | "TooManyEntriesInBatchRequest"
        | "BatchRequestTooLong"
        | "TagLimitExceeded"
        | "TagLimitExceededException"
        | "SubscriptionLimitExceeded"
        | "TopicLimitExceeded"
        | "KMSLimitExceeded" => ErrorKind::LimitExceeded,
        "InvalidParameterValue"
        | "InvalidParameterValueException"
        | "InvalidParameter"
        | "InvalidParameterException"
        | "InvalidAttributeName"
        | "InvalidAttributeValue"
        | "InvalidMessageContents"
        | "MissingParameter"
        | "UnsupportedOperation"
        | "ValidationError"
        | "InvalidAddress"
        | "InvalidBatchEntryId"
        | "EmptyBatchRequest"
        | "BatchEntryIdsNotDistinct" => ErrorKind::Rejected,
        _ => ErrorKind::Other,
    }
}

/// Turn an SDK error into a kombu error: `what` says what was being done.
/// The message never holds credentials (the SDK does not put them in
/// errors; the URL's password is never passed here).
pub(crate) fn from_sdk<E, R>(what: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(&err).to_string();
    let kind = match &err {
        SdkError::ServiceError(service) => service
            .err()
            .code()
            .map(error_kind_for_code)
            .unwrap_or(ErrorKind::Other),
        SdkError::TimeoutError(_) => ErrorKind::Timeout,
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                ErrorKind::Timeout
            } else if failure.is_io() {
                ErrorKind::ConnectionRefused
            } else {
                ErrorKind::ConnectionLost
            }
        }
        SdkError::ResponseError(_) => ErrorKind::Protocol,
        SdkError::ConstructionFailure(_) => {
            let lower = detail.to_ascii_lowercase();
            if lower.contains("credential") || lower.contains("identity") {
                ErrorKind::Auth
            } else {
                ErrorKind::InvalidOption
            }
        }
        _ => ErrorKind::Other,
    };
    Error::new(kind, format!("{what}: {detail}")).with_source(err)
}

/// The error code of a service error, if it is one.
pub(crate) fn code_of<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

/// True when an SDK error says the queue does not exist.
pub(crate) fn is_missing_queue<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    code_of(err).is_some_and(|c| error_kind_for_code(c) == ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        for (code, kind) in [
            (
                "AWS.SimpleQueueService.NonExistentQueue",
                ErrorKind::NotFound,
            ),
            ("QueueDoesNotExist", ErrorKind::NotFound),
            ("com.amazonaws.sqs#QueueDoesNotExist", ErrorKind::NotFound),
            ("SignatureDoesNotMatch", ErrorKind::Auth),
            ("AccessDenied", ErrorKind::Auth),
            ("AuthorizationError", ErrorKind::Auth),
            ("RequestThrottled", ErrorKind::Timeout),
            ("ThrottlingException", ErrorKind::Timeout),
            ("ServiceUnavailable", ErrorKind::ConnectionLost),
            (
                "AWS.SimpleQueueService.PurgeQueueInProgress",
                ErrorKind::PreconditionFailed,
            ),
            ("QueueAlreadyExists", ErrorKind::PreconditionFailed),
            ("InvalidParameterValue", ErrorKind::Rejected),
            ("TooManyEntriesInBatchRequest", ErrorKind::LimitExceeded),
            ("SomethingNew", ErrorKind::Other),
        ] {
            assert_eq!(error_kind_for_code(code), kind, "{code}");
        }
    }

    #[test]
    fn throttling_and_outages_are_recoverable() {
        for code in ["Throttling", "RequestThrottled", "InternalError"] {
            assert!(Error::new(error_kind_for_code(code), "x").is_recoverable());
        }
        assert!(!Error::new(error_kind_for_code("AccessDenied"), "x").is_recoverable());
    }
}
