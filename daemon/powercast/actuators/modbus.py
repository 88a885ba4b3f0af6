"""A coil or holding register on a Modbus TCP device, e.g. a fan drive; verified by reading back."""

from __future__ import annotations

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from powercast.actuators.base import DriverError
from powercast.config import ModbusActuator


class ModbusDriver:
    def __init__(self, name: str, config: ModbusActuator) -> None:
        self.name = name
        self.timeout_s = config.timeout_s * 2
        self._config = config
        self._client: AsyncModbusTcpClient | None = None
        self._where = f"{config.host}:{config.port} unit {config.unit}"

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is None or not self._client.connected:
            if self._client is not None:
                self._client.close()
            client = AsyncModbusTcpClient(
                self._config.host, port=self._config.port, timeout=self._config.timeout_s, retries=0
            )
            if not await client.connect():
                client.close()
                raise DriverError(f"{self.name}: cannot connect to {self._where}")
            self._client = client
        return self._client

    async def apply(self, on: bool) -> None:
        c = self._config
        try:
            client = await self._connected()
            if c.coil is not None:
                reply = await client.write_coil(c.coil, on, device_id=c.unit)
            else:
                assert c.register is not None
                value = c.on_value if on else c.off_value
                reply = await client.write_register(c.register, value, device_id=c.unit)
        except ModbusException as err:
            self._drop()
            raise DriverError(f"{self.name}: {self._where}: {err}") from None
        if reply.isError():
            raise DriverError(f"{self.name}: {self._where} refused the write: {reply}")

    async def read(self) -> bool | None:
        c = self._config
        try:
            client = await self._connected()
            if c.coil is not None:
                reply = await client.read_coils(c.coil, count=1, device_id=c.unit)
                if reply.isError():
                    raise DriverError(f"{self.name}: {self._where} refused the read: {reply}")
                return bool(reply.bits[0])
            assert c.register is not None
            reply = await client.read_holding_registers(c.register, count=1, device_id=c.unit)
        except ModbusException as err:
            self._drop()
            raise DriverError(f"{self.name}: {self._where}: {err}") from None
        if reply.isError():
            raise DriverError(f"{self.name}: {self._where} refused the read: {reply}")
        value = reply.registers[0]
        if value == c.on_value:
            return True
        if value == c.off_value:
            return False
        return value > c.off_value

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
