"""Helpers for the AWS emulator (moto server) the test suite runs against.

    aws_emulator.py wait URL            wait until the emulator answers
    aws_emulator.py setup TABLE BUCKET  create the table (PK/SK, on-demand, TTL on `ttl`) and bucket
    aws_emulator.py item TABLE PK SK    print one item as DynamoDB's typed JSON (an independent
                                        client's view, for the data-model test)
    aws_emulator.py queue NAME          create an SQS queue (if missing) and print its URL

The endpoint comes from AWS_ENDPOINT_URL.
"""

import json
import os
import sys
import time
import urllib.request


def wait(url: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    sys.exit(f"the AWS emulator at {url} did not start")


def client(service: str):
    import boto3

    return boto3.client(service, endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def setup(table: str, bucket: str) -> None:
    ddb = client("dynamodb")
    ddb.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
    )
    client("s3").create_bucket(Bucket=bucket)


def queue(name: str) -> None:
    print(client("sqs").create_queue(QueueName=name)["QueueUrl"])


def item(table: str, pk: str, sk: str) -> None:
    found = client("dynamodb").get_item(
        TableName=table, Key={"PK": {"S": pk}, "SK": {"S": sk}}, ConsistentRead=True
    )
    print(json.dumps(found.get("Item")))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"wait": wait, "setup": setup, "item": item, "queue": queue}[command](*args)
