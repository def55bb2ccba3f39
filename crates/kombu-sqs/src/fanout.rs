//! Fanout exchanges over SNS: one topic per exchange (named as kombu names
//! it: `entity_name(queue_name_prefix + exchange)`), every bound queue
//! subscribed with raw message delivery, and the queue's policy letting
//! the topic send to it (statement `KombuManaged`, as Python kombu writes).

use serde_json::{json, Value};

/// The `KombuManaged` statement of a queue policy allowing `topic_arns`.
fn kombu_statement(queue_arn: &str, topic_arns: &[String]) -> Value {
    let source = if topic_arns.len() == 1 {
        Value::String(topic_arns[0].clone())
    } else {
        json!(topic_arns)
    };
    json!({
        "Sid": "KombuManaged",
        "Effect": "Allow",
        "Principal": {"Service": "sns.amazonaws.com"},
        "Action": "SQS:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnLike": {"aws:SourceArn": source}}
    })
}

/// The queue policy `existing` (may be empty) with `topic_arn` added to the
/// topics allowed by the `KombuManaged` statement; other statements stay.
pub(crate) fn policy_allowing(existing: Option<&str>, queue_arn: &str, topic_arn: &str) -> String {
    let mut policy: Value = existing
        .and_then(|p| serde_json::from_str(p).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let obj = policy.as_object_mut().expect("an object");
    obj.entry("Version").or_insert_with(|| "2012-10-17".into());
    let statements = obj.entry("Statement").or_insert_with(|| json!([]));
    if !statements.is_array() {
        *statements = json!([statements.clone()]);
    }
    let list = statements.as_array_mut().expect("an array");
    let mut topics: Vec<String> = Vec::new();
    if let Some(index) = list
        .iter()
        .position(|s| s.get("Sid").and_then(Value::as_str) == Some("KombuManaged"))
    {
        let old = list.remove(index);
        match old.pointer("/Condition/ArnLike/aws:SourceArn") {
            Some(Value::String(s)) => topics.push(s.clone()),
            Some(Value::Array(a)) => {
                topics.extend(a.iter().filter_map(|v| v.as_str().map(str::to_owned)))
            }
            _ => {}
        }
    }
    if !topics.iter().any(|t| t == topic_arn) {
        topics.push(topic_arn.to_owned());
    }
    list.push(kombu_statement(queue_arn, &topics));
    policy.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_keeps_other_statements_and_adds_topics() {
        let q = "arn:aws:sqs:us-east-1:1:q";
        let first = policy_allowing(None, q, "arn:t1");
        let v: Value = serde_json::from_str(&first).unwrap();
        assert_eq!(
            v["Statement"][0]["Condition"]["ArnLike"]["aws:SourceArn"],
            "arn:t1"
        );
        let existing =
            json!({"Version": "2012-10-17", "Statement": [{"Sid": "Mine"}, v["Statement"][0]]})
                .to_string();
        let second = policy_allowing(Some(&existing), q, "arn:t2");
        let v: Value = serde_json::from_str(&second).unwrap();
        assert_eq!(v["Statement"][0]["Sid"], "Mine");
        assert_eq!(
            v["Statement"][1]["Condition"]["ArnLike"]["aws:SourceArn"],
            json!(["arn:t1", "arn:t2"])
        );
        // Adding a topic twice changes nothing.
        assert_eq!(policy_allowing(Some(&second), q, "arn:t2"), second);
    }
}
