# An agent that runs one command in a sandpool session, with the official MCP Python SDK.
#   pip install mcp==2.3.0
#   python agent.py <mcp.url> <mcp.token> '<command>'     (both from the session event)
import asyncio, json, sys
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, token, command):
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("exec", {"command": command})
                text = "".join(c.text for c in result.content if c.type == "text")
                print(json.dumps({"isError": result.is_error, "text": text}))

asyncio.run(main(*sys.argv[1:4]))
